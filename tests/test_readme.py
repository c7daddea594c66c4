"""README's Python examples run as written (in order, one namespace, in a scratch folder)."""

import re
import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_examples_run(tmp_path):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 3, "README lost its examples"
    script = tmp_path / "readme_examples.py"
    script.write_text("import matplotlib\nmatplotlib.use('Agg')\n" + "\n".join(blocks))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("m.keras", "layers.parquet", "variance.png", "grad_by_lag.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "ratio" in done.stdout
