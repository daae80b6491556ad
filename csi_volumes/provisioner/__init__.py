"""Dynamic provisioning for the S3 driver: a kopf operator that turns PVCs into PVs."""

from csi_volumes.provisioner.operator import Provisioner, run_provisioner

__all__ = ["Provisioner", "run_provisioner"]
