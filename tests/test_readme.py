"""The README's Python example runs as written (except the line that needs a real file)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs():
    text = README.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    code = "\n".join(line for line in block.splitlines() if "best_model.pth" not in line)
    namespace: dict = {}
    exec(compile(code, "README example", "exec"), namespace)
    assert namespace["out"]["logits"].shape == (2, 2)
    assert namespace["h"].shape == (3000, 512)
