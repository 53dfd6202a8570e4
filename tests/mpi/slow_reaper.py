"""Run a command as a child and keep it a zombie for a while after it ends, as a launcher
that neither cleans up a job nor reaps its processes at once would (``mpiexec -n 3 python
slow_reaper.py python script.py ...``): the job's other ranks see the rank's process end
without the launcher ending the job for them, and can read how it ended."""
import os
import subprocess
import sys
import time

child = subprocess.Popen(sys.argv[1:], close_fds=False)  # the launcher's descriptors go with it
os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # ended, left unreaped
time.sleep(30)
sys.exit(child.wait())
