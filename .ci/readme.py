"Generate README.md from index.ipynb (markdown cells and code sources, no outputs); --check fails if out of date."
import json, sys
from pathlib import Path
root = Path(__file__).resolve().parent.parent
nb = json.loads((root/"index.ipynb").read_text())
parts = []
for cell in nb["cells"]:
    src = "".join(cell["source"]).strip()
    if not src or src.startswith("#| hide"): continue
    parts.append(src if cell["cell_type"] == "markdown" else f"```python\n{src}\n```")
text = "<!-- generated from index.ipynb by .ci/readme.py: edit the notebook, not this file -->\n\n" + "\n\n".join(parts) + "\n"
readme = root/"README.md"
if "--check" in sys.argv:
    if not readme.exists() or readme.read_text() != text:
        print("README.md is out of date with index.ipynb: run `python .ci/readme.py`"); sys.exit(1)
else: readme.write_text(text)
