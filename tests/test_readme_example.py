"""README's Python example runs and prints what README says it prints (the method visibly clips)."""
import contextlib
import io
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_prints_what_it_claims():
    text = README.read_text()
    code = re.search(r"## Python API.*?```python\n(.*?)```", text, re.S).group(1)
    claimed = re.search(r"```python\n.*?```\nprints.*?```\n(.*?)```", text[text.index("## Python API"):], re.S).group(1)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "README.md", "exec"), {})
    assert out.getvalue().strip() == claimed.strip()
    assert "0.0, 0.0, 0.0" not in out.getvalue()  # it clips
