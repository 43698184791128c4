// Command pause is the pod sandbox process for hack/kube's cluster: it holds the pod's
// namespaces open, reaps any zombie that ends up parented to it (it is PID 1 when the pod
// shares its PID namespace), and exits 0 on SIGTERM or SIGINT. It is built static and packed
// alone in an image (hack/kube/images.sh), because no registry with registry.k8s.io/pause is
// reachable from the machines kiln's CI runs on.
package main

import (
	"os"
	"os/signal"
	"syscall"
)

func main() {
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGCHLD)
	for s := range sigs {
		if s != syscall.SIGCHLD {
			os.Exit(0)
		}
		// Several children may have exited behind one SIGCHLD: reap until none is left.
		for {
			var ws syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &ws, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
