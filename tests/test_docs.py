"""BUILD.md's module tour names every module, so a newcomer's map has no blank spots."""

import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parent.parent


def _tour() -> str:
    text = (ROOT / "BUILD.md").read_text()
    section = text[text.index("## A tour of the modules"):text.index("### The batch")]
    return section[section.index("```"):section.rindex("```")]


def test_tour_names_every_module():
    """Each line of the tour's tree is a name at an indentation; rebuild the paths."""
    listed, stack = set(), []
    for line in _tour().splitlines()[1:]:
        match = re.match(r"^( *)(\S+)", line)
        if not match or match.group(2).startswith("'") or not re.match(r"^[\w/.]+$", match.group(2)):
            continue
        depth, name = len(match.group(1)) // 2, match.group(2)
        if not (name.endswith("/") or name.endswith(".py")):
            continue
        stack[depth:] = [name.rstrip("/")]
        listed.add("/".join(stack))
    modules = {str(p.relative_to(ROOT)) for p in (ROOT / "mmjax").rglob("*.py")
               if p.name != "__init__.py" or p.parent.name in ("evaluators",)}
    missing = sorted(m for m in modules if m not in listed)
    assert not missing, f"BUILD.md's module tour does not list: {missing}"
