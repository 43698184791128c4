package kube

import (
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/kiln-dev/kiln/internal/builder"
	"github.com/kiln-dev/kiln/internal/engine"
)

// current reports whether gen is still b's latest start.
func (f *Fleet) current(b *kbuilder, gen int) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return b.gen == gen && !f.closed
}

var errSuperseded = errors.New("the builder was stopped or reset while it started")

// start brings b's pod up for spec and waits until buildkitd answers over
// mutual TLS; then b is ready. Adopting, it only waits for the pod.
func (f *Fleet) start(ctx context.Context, b *kbuilder, gen int, spec builder.Spec, adopting bool) error {
	began := time.Now()
	if !adopting {
		if err := f.applyBuilder(ctx, b, gen, spec); err != nil {
			return err
		}
	}
	pod, err := f.waitPod(ctx, b)
	if err != nil {
		return err
	}
	conn, err := f.clientConn(b.projectID, b.serverName)
	if err != nil {
		return err
	}
	conn.Endpoint = "tcp://" + pod.Status.PodIP + ":" + strconv.Itoa(port)
	if err := probeReady(ctx, conn); err != nil {
		return fmt.Errorf("buildkitd in pod %s did not answer: %w", pod.Name, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if b.gen != gen || f.closed {
		return errSuperseded
	}
	b.state, b.lastErr, b.retryAt = builder.StateReady, nil, time.Time{}
	b.podIP, b.podUID, b.restarts = pod.Status.PodIP, string(pod.UID), restartCount(pod)
	b.client, b.clientAt = conn, time.Now()
	b.client.Endpoint = ""
	b.readyAt = time.Now()
	f.log.Info("builder ready", "project", b.projectID, "platform", b.platform, "pod", pod.Name, "ip", pod.Status.PodIP,
		"adopted", adopting, "took", time.Since(began).Round(time.Millisecond), "pod_age", time.Since(pod.CreationTimestamp.Time).Round(time.Second))
	return nil
}

// probeReady dials buildkitd until it lists its workers.
func probeReady(ctx context.Context, conn engine.Connection) error {
	var last error
	for {
		dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		c, err := engine.Dial(dctx, conn)
		cancel()
		if err == nil {
			c.Close()
			return nil
		}
		last = err
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w (last: %v)", context.Cause(ctx), last)
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// applyBuilder writes b's Secret and StatefulSet (at one replica), unless
// a stop or reset came since gen.
func (f *Fleet) applyBuilder(ctx context.Context, b *kbuilder, gen int, spec builder.Spec) error {
	data, err := f.secretData(b, spec)
	if err != nil {
		return err
	}
	archNodes, err := f.hasNodes(ctx, b.arch)
	if err != nil {
		return err
	}
	size := sizeOf(spec.Hardware, f.cfg.DefaultSize)
	want := f.statefulSet(b.object, b.projectID, b.arch, 1, f.podTemplate(b.object, b.projectID, b.arch, b.platform, size, archNodes))

	b.ops.Lock()
	defer b.ops.Unlock()
	if !f.current(b, gen) {
		return errSuperseded
	}
	if err := f.applySecret(ctx, f.secret(b.object, b.projectID, b.arch, data)); err != nil {
		return fmt.Errorf("secret %s: %w", b.object, err)
	}
	sets := f.k.AppsV1().StatefulSets(f.cfg.Namespace)
	have, err := sets.Get(ctx, b.object, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = sets.Create(ctx, want, metav1.CreateOptions{})
	case err != nil:
	case have.Annotations[annoTemplate] != want.Annotations[annoTemplate]:
		// A new image, size or node selection: the pod is replaced.
		have.Spec.Template, have.Spec.Replicas = want.Spec.Template, want.Spec.Replicas
		have.Annotations = want.Annotations
		_, err = sets.Update(ctx, have, metav1.UpdateOptions{})
	case have.Spec.Replicas == nil || *have.Spec.Replicas != 1:
		have.Spec.Replicas = want.Spec.Replicas
		_, err = sets.Update(ctx, have, metav1.UpdateOptions{})
	}
	if err != nil {
		return fmt.Errorf("statefulset %s: %w", b.object, err)
	}
	return nil
}

// secretData is what b's pod mounts at /etc/kiln: a server certificate
// for its server name, the CA of the clients it accepts (kiln's own, not
// builds'), buildkitd.toml and the CAs of kiln's registry.
func (f *Fleet) secretData(b *kbuilder, spec builder.Spec) (map[string][]byte, error) {
	ca, err := f.cfg.CA.BuilderClientCA()
	if err != nil {
		return nil, err
	}
	cert, key, err := f.cfg.CA.IssueServer(b.projectID, b.serverName, nil, certTTL)
	if err != nil {
		return nil, err
	}
	data := map[string][]byte{"ca.crt": ca, "tls.crt": cert, "tls.key": key}
	own := f.cfg.OwnRegistry()
	var inPod []string
	for i, file := range own.CAFiles {
		pem, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("kiln's registry CA: %w", err)
		}
		name := fmt.Sprintf("registry-ca-%d.crt", i)
		data[name] = pem
		inPod = append(inPod, certsDir+"/"+name)
	}
	own.CAFiles = inPod
	conf, err := builder.PodConfig(spec, f.cfg.InsecureRegistries, own)
	if err != nil {
		return nil, err
	}
	data["buildkitd.toml"] = conf
	return data, nil
}

// hasNodes reports whether the cluster has nodes of arch: builders then
// run on them; otherwise on any node, emulating arch with QEMU if the
// node has it registered (binfmt_misc).
func (f *Fleet) hasNodes(ctx context.Context, arch string) (bool, error) {
	nodes, err := f.k.CoreV1().Nodes().List(ctx, metav1.ListOptions{LabelSelector: "kubernetes.io/arch=" + arch, Limit: 1})
	if apierrors.IsForbidden(err) {
		return false, nil // kiln may not list nodes: no selection
	}
	if err != nil {
		return false, fmt.Errorf("list nodes: %w", err)
	}
	return len(nodes.Items) > 0, nil
}

// waitPod waits until b's pod runs and is ready, failing early on what
// will not get better by itself (an image that cannot be pulled, a
// configuration the container cannot start with).
func (f *Fleet) waitPod(ctx context.Context, b *kbuilder) (*corev1.Pod, error) {
	pods := f.k.CoreV1().Pods(f.cfg.Namespace)
	var why string
	for {
		pod, err := pods.Get(ctx, podName(b.object), metav1.GetOptions{})
		switch {
		case err == nil && pod.DeletionTimestamp == nil && pod.Status.PodIP != "" && podReady(pod):
			return pod, nil
		case err == nil:
			why = podWaiting(pod)
			for _, cs := range pod.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil {
					switch w.Reason {
					case "ErrImagePull", "ImagePullBackOff", "InvalidImageName", "CreateContainerConfigError", "CreateContainerError":
						return nil, fmt.Errorf("pod %s: %s: %s", pod.Name, w.Reason, w.Message)
					}
				}
			}
		case apierrors.IsNotFound(err):
			why = "no pod yet"
		default:
			why = err.Error()
		}
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("pod %s not ready (%s): %w", podName(b.object), why, context.Cause(ctx))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func podReady(p *corev1.Pod) bool {
	if p.Status.Phase != corev1.PodRunning {
		return false
	}
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// podWaiting says why a pod is not ready, in Kubernetes' words.
func podWaiting(p *corev1.Pod) string {
	for _, c := range p.Status.Conditions {
		if c.Status != corev1.ConditionTrue && c.Message != "" {
			return string(c.Type) + ": " + c.Message
		}
	}
	for _, cs := range p.Status.ContainerStatuses {
		if w := cs.State.Waiting; w != nil {
			return w.Reason + ": " + w.Message
		}
	}
	return string(p.Status.Phase)
}

func restartCount(p *corev1.Pod) int32 {
	var n int32
	for _, cs := range p.Status.ContainerStatuses {
		n += cs.RestartCount
	}
	return n
}

// watch notices ready builders whose pod restarted, went or is going:
// their builds fail (OnExit) and the builder is waited for again, as
// Kubernetes restarts it.
func (f *Fleet) watch() {
	defer f.wg.Done()
	t := time.NewTicker(f.cfg.Poll)
	defer t.Stop()
	for {
		select {
		case <-f.quit:
			return
		case <-t.C:
		}
		listed := time.Now()
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		list, err := f.k.CoreV1().Pods(f.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: managedSelector})
		cancel()
		if err != nil {
			f.log.Warn("list builder pods", "err", err)
			continue
		}
		pods := map[string]*corev1.Pod{}
		for i := range list.Items {
			pods[list.Items[i].Name] = &list.Items[i]
		}
		var gone []lost
		f.mu.Lock()
		for _, b := range f.builders {
			if b.state != builder.StateReady || b.readyAt.After(listed) {
				continue // not ready, or ready on a pod newer than the list
			}
			if why, died := podLost(pods[podName(b.object)], b.podUID, b.restarts); why != "" {
				gone = append(gone, f.lostLocked(b, why, died))
			}
		}
		f.mu.Unlock()
		f.reportLost(gone)
	}
}

// lost is a builder whose pod went, and the builds that were on it.
type lost struct {
	b      *kbuilder
	leases []string
	err    error
}

// lostLocked records that b's pod or container went (why), at died, and
// waits for its new one. The builds that held b from before then, while a
// connection was open through the gateway (a solve ran there), are
// returned for reportLost; the others carry over: a build handed the
// builder since connects to the new container, or once it is ready, as
// the local driver's leases do when it recycles an idle builder.
func (f *Fleet) lostLocked(b *kbuilder, why string, died time.Time) lost {
	l := lost{b: b, err: fmt.Errorf("the builder for project %s (%s) %s; retry the build", b.projectID, b.platform, why)}
	if b.use.Conns() > 0 {
		l.leases = b.use.TakeLeases(died, time.Now())
	}
	b.lastErr = l.err
	b.podIP, b.podUID = "", ""
	f.log.Warn("builder pod lost; waiting for it again", "project", b.projectID, "platform", b.platform, "why", why, "builds", len(l.leases))
	f.startLockedAs(b, true)
	b.broadcastLocked()
	return l
}

// reportLost fails the builds that were on lost pods (OnExit).
func (f *Fleet) reportLost(gone []lost) {
	for _, l := range gone {
		if f.cfg.OnExit != nil && len(l.leases) > 0 {
			f.cfg.OnExit(l.b.projectID, l.b.platform, l.leases, l.err)
		}
	}
}

// stillThere reports whether the ready builder named serverName still has
// the pod it became ready on; if not, it is marked lost (and waited for
// again). An API error counts as there: the watch decides then.
func (f *Fleet) stillThere(ctx context.Context, serverName string) bool {
	f.mu.Lock()
	b, ok := f.names[serverName]
	if !ok || b.state != builder.StateReady {
		f.mu.Unlock()
		return ok
	}
	uid, restarts := b.podUID, b.restarts
	f.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pod, err := f.k.CoreV1().Pods(f.cfg.Namespace).Get(ctx, podName(b.object), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		pod, err = nil, nil
	}
	if err != nil {
		return true
	}
	why, died := podLost(pod, uid, restarts)
	if why == "" {
		return true
	}
	f.mu.Lock()
	var gone []lost
	if b.state == builder.StateReady && b.podUID == uid {
		gone = append(gone, f.lostLocked(b, why, died))
	}
	f.mu.Unlock()
	f.reportLost(gone)
	return false
}

// podLost says how pod is no longer the one a builder was ready on (uid,
// with restarts container restarts), and when that one went, as far as
// Kubernetes tells (to the second); "" if it still is.
func podLost(pod *corev1.Pod, uid string, restarts int32) (why string, died time.Time) {
	now := time.Now()
	switch {
	case pod == nil:
		return "lost its pod", now
	case string(pod.UID) != uid:
		return "lost its pod (it was replaced)", pod.CreationTimestamp.Time
	case pod.DeletionTimestamp != nil:
		return "lost its pod (it is being deleted)", now
	case pod.Status.Phase == corev1.PodFailed || pod.Status.Phase == corev1.PodSucceeded:
		return "lost its pod (" + string(pod.Status.Phase) + ")", now
	case restartCount(pod) != restarts:
		why, died := "restarted", now
		for _, cs := range pod.Status.ContainerStatuses {
			if t := cs.LastTerminationState.Terminated; t != nil {
				if t.Reason != "" {
					why += " (" + t.Reason + ")"
				}
				if !t.FinishedAt.IsZero() {
					died = t.FinishedAt.Time
				}
			}
		}
		return why, died
	}
	return "", time.Time{}
}

// reap scales builders idle for IdleTTL to zero: the pod goes, its
// volume stays.
func (f *Fleet) reap() {
	defer f.wg.Done()
	interval := min(max(f.cfg.IdleTTL/4, 50*time.Millisecond), 30*time.Second)
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-f.quit:
			return
		case <-t.C:
		}
		now := time.Now()
		type idle struct {
			b   *kbuilder
			gen int
		}
		var stops []idle
		f.mu.Lock()
		for _, b := range f.builders {
			// A crashed builder's pod may still run (it never answered):
			// it goes too.
			inUse := b.use.InUse() || b.use.IdleFor(now) < f.cfg.IdleTTL
			if (b.state != builder.StateReady && b.state != builder.StateCrashed) || inUse {
				continue
			}
			f.log.Info("scaling idle builder to zero", "project", b.projectID, "platform", b.platform, "idle", b.use.IdleFor(now).Round(time.Second))
			f.stopLocked(b)
			stops = append(stops, idle{b, b.gen})
		}
		f.mu.Unlock()
		for _, s := range stops {
			f.wg.Add(1)
			go func() {
				defer f.wg.Done()
				if err := f.scaleDown(s.b, s.gen); err != nil {
					f.log.Warn("scale an idle builder to zero", "project", s.b.projectID, "platform", s.b.platform, "err", err)
				}
			}()
		}
	}
}

// scaleDown sets b's StatefulSet to zero replicas, unless it was started
// again since gen.
func (f *Fleet) scaleDown(b *kbuilder, gen int) error {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	b.ops.Lock()
	defer b.ops.Unlock()
	f.mu.Lock()
	again := b.gen != gen
	f.mu.Unlock()
	if again {
		return nil
	}
	sets := f.k.AppsV1().StatefulSets(f.cfg.Namespace)
	have, err := sets.Get(ctx, b.object, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil
	}
	if err != nil {
		return err
	}
	zero := int32(0)
	have.Spec.Replicas = &zero
	_, err = sets.Update(ctx, have, metav1.UpdateOptions{})
	return err
}

// adopt takes over the builders found running (a StatefulSet at one
// replica) that are this kiln's (Config.Adopt): they are waited for,
// not started again.
func (f *Fleet) adopt(ctx context.Context) error {
	list, err := f.k.AppsV1().StatefulSets(f.cfg.Namespace).List(ctx, metav1.ListOptions{LabelSelector: managedSelector})
	if err != nil {
		return fmt.Errorf("kube: list builders in namespace %s: %w", f.cfg.Namespace, err)
	}
	for _, s := range list.Items {
		projectID, arch := s.Annotations[annoProject], s.Labels[labelPlatform]
		platform := "linux/" + arch
		if s.Spec.Replicas == nil || *s.Spec.Replicas == 0 || s.Name != objectName(projectID, arch) {
			continue
		}
		if f.cfg.Adopt != nil && !f.cfg.Adopt(projectID, platform) {
			continue
		}
		caPEM, err := f.cfg.CA.ProjectCA(projectID)
		if err != nil {
			f.log.Warn("builder found running not adopted", "statefulset", s.Name, "err", err)
			continue
		}
		f.mu.Lock()
		b := f.builderLocked(projectID, platform, arch)
		b.spec = builder.Spec{ProjectID: projectID, Platform: platform, KeepBytes: builder.DefaultKeepBytes, KeepDuration: builder.DefaultKeepDuration}
		b.caPEM = string(caPEM)
		b.use.Touch(time.Now())
		f.startLockedAs(b, true)
		f.mu.Unlock()
		f.log.Info("adopting a running builder", "project", projectID, "platform", platform, "statefulset", s.Name)
	}
	return nil
}

// deleteProject deletes every object of the project's builders and waits
// until their pods and volumes are gone, so that its next builder starts
// on an empty volume.
func (f *Fleet) deleteProject(ctx context.Context, projectID string) error {
	f.mu.Lock()
	var mine []*kbuilder
	for _, b := range f.builders {
		if b.projectID == projectID {
			mine = append(mine, b)
		}
	}
	f.mu.Unlock()
	for _, b := range mine {
		b.ops.Lock()
		defer b.ops.Unlock()
	}
	ns := f.cfg.Namespace
	sel := metav1.ListOptions{LabelSelector: projectSelector(projectID)}
	bg := metav1.DeletePropagationBackground
	del := metav1.DeleteOptions{PropagationPolicy: &bg}
	var errs []error
	errs = append(errs, f.k.AppsV1().StatefulSets(ns).DeleteCollection(ctx, del, sel))
	errs = append(errs, f.k.CoreV1().Secrets(ns).DeleteCollection(ctx, del, sel))
	errs = append(errs, f.k.NetworkingV1().NetworkPolicies(ns).DeleteCollection(ctx, del, sel))
	// The pods first: a claim in use by one is only deleted once it is gone.
	errs = append(errs, f.k.CoreV1().Pods(ns).DeleteCollection(ctx, del, sel))
	errs = append(errs, f.k.CoreV1().PersistentVolumeClaims(ns).DeleteCollection(ctx, del, sel))
	if err := errors.Join(errs...); err != nil {
		return err
	}
	for {
		pods, err := f.k.CoreV1().Pods(ns).List(ctx, sel)
		if err != nil {
			return err
		}
		claims, err := f.k.CoreV1().PersistentVolumeClaims(ns).List(ctx, sel)
		if err != nil {
			return err
		}
		if len(pods.Items) == 0 && len(claims.Items) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%d pods and %d volume claims still going: %w", len(pods.Items), len(claims.Items), context.Cause(ctx))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// ensureNamespace creates the namespace unless it exists (or kiln may not
// look: then the operator made it).
func (f *Fleet) ensureNamespace(ctx context.Context) error {
	nss := f.k.CoreV1().Namespaces()
	_, err := nss.Get(ctx, f.cfg.Namespace, metav1.GetOptions{})
	switch {
	case err == nil, apierrors.IsForbidden(err):
		return nil
	case !apierrors.IsNotFound(err):
		return fmt.Errorf("kube: namespace %s: %w", f.cfg.Namespace, err)
	}
	_, err = nss.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: f.cfg.Namespace,
		Labels: map[string]string{labelManagedBy: managedBy}}}, metav1.CreateOptions{})
	if err != nil && !apierrors.IsAlreadyExists(err) {
		return fmt.Errorf("kube: create namespace %s: %w", f.cfg.Namespace, err)
	}
	return nil
}

// apply creates or replaces a NetworkPolicy.
func (f *Fleet) apply(ctx context.Context, p *networkingv1.NetworkPolicy) error {
	api := f.k.NetworkingV1().NetworkPolicies(f.cfg.Namespace)
	return upsert(ctx, p, api.Get, api.Create, api.Update)
}

// applySecret creates or replaces a Secret.
func (f *Fleet) applySecret(ctx context.Context, s *corev1.Secret) error {
	api := f.k.CoreV1().Secrets(f.cfg.Namespace)
	return upsert(ctx, s, api.Get, api.Create, api.Update)
}

// upsert creates obj, or replaces the object of its name with it.
func upsert[T metav1.Object](ctx context.Context, obj T,
	get func(context.Context, string, metav1.GetOptions) (T, error),
	create func(context.Context, T, metav1.CreateOptions) (T, error),
	update func(context.Context, T, metav1.UpdateOptions) (T, error),
) error {
	have, err := get(ctx, obj.GetName(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		_, err = create(ctx, obj, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	obj.SetResourceVersion(have.GetResourceVersion())
	_, err = update(ctx, obj, metav1.UpdateOptions{})
	return err
}
