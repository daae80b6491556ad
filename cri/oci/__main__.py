"""`python3 -m cri.oci ARGS`: the same as the `kubelet-py-oci` command."""

import sys

from cri.oci.cli import main

sys.exit(main())
