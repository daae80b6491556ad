"""`python -m kubelet_py` runs the same CLI as the `kubelet-py` console script."""

from kubelet_py.cli import main

raise SystemExit(main())
