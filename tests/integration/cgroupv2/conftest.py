"""The cgroup v2 tests: `inside/` runs only in the guest (see tests/support/guest.py).

On the host, `test_cgroupv2_guest.py` boots the guest and runs `inside/` there; the
inside tests themselves are not collected on the host (it has no cgroup2-only tree).
"""

import os

collect_ignore = [] if os.environ.get("KUBELET_PY_GUEST") == "1" else ["inside"]
