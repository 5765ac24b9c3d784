"""The project into the guest: what is sent, how, and when (the edit-test loop's sync).

    rules.py  what the sync leaves out: vmlab's own excludes, the config's, what git ignores;
              for rsync, the host's scan, the guest's check and `vmlab watch` alike
    tree.py   the host's side as rsync would send it, and what changed since a sync
    plan.py   the decision: nothing, inline edits, a tar of what changed, or rsync
    guest.py  the shell a suite's session runs before the suite, and its status lines
    gate.py   the host's side of that session: answers the guest as plan.py decides
    rsync.py  rsync itself (`vmlab sync`, and the plan's last resort)
"""
