"""A two-node Ray cluster on loopback for tests, run by an interpreter that may lack grec.

    python tests/ray_test_cluster.py WORKER_CPUS [WORKER_OBJECT_STORE_MIB | default]

The head has no CPUs (no task or actor can run there); the second node has WORKER_CPUS and an object
store of WORKER_OBJECT_STORE_MIB (384 MiB unless given; `default`: Ray's own size, 30% of the memory
available when the node starts, capped). Both are
real raylets of this interpreter, so their workers import only what it has (plus what a job's
runtime environment ships). It prints one JSON line ({"address": ...}) when both nodes are up and
runs until stdin closes or SIGTERM arrives. (`ray.cluster_utils.Cluster`, Ray's multi-node test
helper: `ray start --address` rewrites a 127.0.0.1 address to the host's external one.)
Token auth and loopback come from the environment (RAY_AUTH_MODE, RAY_AUTH_TOKEN_PATH,
RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0).
"""

import json
import signal
import sys
import threading

from ray._private.utils import estimate_available_memory, resolve_object_store_memory
from ray.cluster_utils import Cluster

MIB = 1024**2
WORKER_OBJECT_STORE_MIB = 384


def main() -> None:
    worker_cpus = int(sys.argv[1])
    store = sys.argv[2] if len(sys.argv) > 2 else str(WORKER_OBJECT_STORE_MIB)
    # `Cluster.add_node` gives a node 150 MiB unless told: "default" asks Ray's own resolution, the
    # size `ray start` gives a node of this machine.
    store_bytes = (resolve_object_store_memory(estimate_available_memory()) if store == "default"
                   else int(store) * MIB)
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 0, "include_dashboard": False, "object_store_memory": 128 * MIB})
    cluster.add_node(num_cpus=worker_cpus, object_store_memory=store_bytes)
    cluster.wait_for_nodes()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    print(json.dumps({"address": cluster.address}), flush=True)
    stop.wait()
    cluster.shutdown()


if __name__ == "__main__":
    main()
