#!/usr/bin/env bash
# The README's first command: install what kiln needs, start `kiln serve` on
# its embedded defaults (SQLite, local builders, default data dir and
# address), and run real builds of examples/hello through it: a client build
# (twice: the second is all CACHED) and a source build kiln runs itself.
set -euo pipefail
cd "$(dirname "$0")/.."
bash hack/setup.sh
KILN=$PWD/bin/kiln
ADDR=127.0.0.1:7420
DATA=$("$KILN" serve --help >/dev/null && { [ "$(id -u)" -eq 0 ] && echo /var/lib/kiln || echo "${XDG_DATA_HOME:-$HOME/.local/share}/kiln"; })

if curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1; then
  echo "demo: kiln serve is already running at $ADDR"
else
  mkdir -p "$DATA"
  echo "demo: starting kiln serve (data $DATA, log $DATA/serve.log)"
  nohup "$KILN" serve >"$DATA/serve.log" 2>&1 &
  echo $! >"$DATA/serve.pid"
  for _ in $(seq 100); do curl -fsS "http://$ADDR/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
  curl -fsS "http://$ADDR/healthz" >/dev/null || { cat "$DATA/serve.log"; exit 1; }
fi

cd examples/hello
cp /bin/busybox busybox
if [ ! -s kiln.json ]; then
  id=$("$KILN" projects create hello --quiet)
  printf '{"id": "%s"}\n' "$id" > kiln.json
  echo "demo: created project $id (saved in examples/hello/kiln.json)"
fi
mkdir -p out
"$KILN" build --progress plain -o type=oci,dest=out/hello.oci.tar .
echo "demo: rebuilding: every step should now be CACHED"
"$KILN" build --progress plain -o type=local,dest=out/rootfs .
echo "demo: the platform flow: upload the source, let kiln build and push it for customer demo-co"
build_id=$("$KILN" build --detach --customer demo-co -t demo .)
"$KILN" builds logs -f "$build_id"
echo
echo "demo: done."
echo "  OCI image archive:  $PWD/out/hello.oci.tar"
echo "  image filesystem:   $PWD/out/rootfs (cat $PWD/out/rootfs/app/greeting.txt)"
echo "  source build:       $build_id, pushed to kiln's registry (kiln builds get $build_id)"
echo "  server:             http://$ADDR (pid $(cat "$DATA/serve.pid" 2>/dev/null || echo '?'), log $DATA/serve.log; stop with: kill \$(cat $DATA/serve.pid))"
cat out/rootfs/app/greeting.txt
