"""Storage behind the budget, signature, room-cache and cool-down seams.

``memory`` keeps everything in process (embedded single-replica mode); a Redis implementation
of the same protocols lets replicas share it.
"""
