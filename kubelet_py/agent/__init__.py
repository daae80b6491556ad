"""The node agent: registers a Node, runs the pods bound to it, reports their status.

sources (API watch, static dir) ──▶ PodManager ──▶ one PodWorker per pod UID
                                                     │ plan (pure) ─▶ CRI calls
PLEG relist of the runtime ──wakes──▶ workers        ▼
NodeStatus + Lease loops                      StatusManager ──▶ API (patch status)
"""
