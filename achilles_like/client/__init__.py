"""The controller: the user's side of the cluster.

``reactor_thread`` runs the one Twisted reactor; ``connection`` is an
authenticated connection used from the caller's thread; ``job`` drives one
job; ``api`` holds the public achilles functions.
"""
