"""Every shipped flag file (paper scale in flags/, CPU scale in flags/cpu/) parses and
validates with the binary it belongs to, through ``scripts/check_flagfiles.py`` (one process
for all files, no training); broken files beside them prove the check refuses what the
binaries refuse."""

import glob
import os
import subprocess
import sys

from tests import binaries

SCRIPT = os.path.join(binaries.REPO, "scripts", "check_flagfiles.py")

# name -> (content, what the binary would say)
BROKEN = {
    "gap_unknown_flag.flags": ("--models=F1\n--no_such_flag=3\n",
                               "Unknown command line flag 'no_such_flag'"),
    "train_batch_above_set.flags": ("--model=F1\n--dataset=mnist\n--batch_size=60001\n",
                                    "larger than the training set (60000 examples of mnist)"),
    "fig4_batch_sweep_unsorted.flags": ("--model=F1\n--batch_sizes=512,256\n",
                                        "strictly increasing"),
    "table3_sharpness_bad_space.flags": ("--subspace_dims=full,-4\n", "--subspace_dims"),
    "nobody.flags": ("--model=F1\n", "name it after its binary"),
}

# The first word of a shipped file's name -> its binary (benchmarks/<binary>.py).
OWNER = {"gap": "gap", "train": "train", "table3": "sharpness", "table4": "sharpness",
         "fig3": "parametric", "fig4": "batch_sweep", "fig5": "warm_start",
         "fig6": "along_training", "setups": "setups", "remedies": "remedies"}


def test_every_shipped_flagfile_validates_with_its_binary(tmp_path):
    shipped = sorted(glob.glob(os.path.join(binaries.REPO, "flags", "*.flags"))
                     + glob.glob(os.path.join(binaries.REPO, "flags", "cpu", "*.flags")))
    assert len(shipped) >= 27, shipped  # The presets are there to be checked.
    broken = []
    for name, (content, _) in BROKEN.items():
        (tmp_path / name).write_text(content)
        broken.append(str(tmp_path / name))
    done = subprocess.run([sys.executable, SCRIPT, *shipped, *broken], cwd=binaries.REPO,
                          env=binaries.environment(), capture_output=True, text=True,
                          timeout=300)
    lines = done.stdout.splitlines()
    verdicts = {}
    for line in lines[:-1]:
        status, path, binary, text = line.split(" ", 3)
        verdicts[os.path.basename(path)] = (path, status, binary, text)
    assert done.returncode == 1, done.stdout + done.stderr[-3000:]
    assert len(lines) == len(shipped) + len(BROKEN) + 1, done.stdout
    for path in shipped:
        relative = os.path.relpath(path, binaries.REPO)
        [(_, status, binary, text)] = [v for v in verdicts.values() if v[0] == relative]
        assert status == "ok", (relative, text)
        assert binary == f"({OWNER[os.path.basename(path).split('_')[0]]}):", relative
    for name, (_, expected) in BROKEN.items():
        _, status, _, text = verdicts[name]
        assert status == "FAIL" and expected in text, (name, text)
    assert lines[-1] == f"{len(shipped)} of {len(shipped) + len(BROKEN)} flag file(s) valid"

