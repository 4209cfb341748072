"""Repository hygiene that CI must enforce: lint, the strict docs build, and the engine's import rules."""

from __future__ import annotations

import functools
import html
import json
import pathlib
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
BIN = pathlib.Path(sys.executable).parent


def _tool(name: str) -> str:
    path = BIN / name
    found = str(path) if path.exists() else shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes with the 'test' extra")
    return found


def test_ruff_passes():
    result = subprocess.run([_tool("ruff"), "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


DOCS_COPY_IGNORE = shutil.ignore_patterns(".git", ".venv", "site", ".cache", "__pycache__", ".hypothesis",
                                          ".pytest_cache", ".ruff_cache", "*.egg-info", "runs", "build")


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> pathlib.Path:
    """The docs built by ``python -m zensical build --strict`` in a copy of the repository (the build writes site/)."""
    pytest.importorskip("zensical", reason="the docs builder comes with the docs extra and with test (Python 3.11+)")
    copy = tmp_path_factory.mktemp("docs") / "repo"
    shutil.copytree(ROOT, copy, ignore=DOCS_COPY_IGNORE)
    result = subprocess.run([sys.executable, "-m", "zensical", "build", "--strict"], cwd=copy, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    return copy / "site"


def test_docs_build_strictly(site):
    """Zensical --strict: a broken link, anchor, snippet, API reference or formula fails the build."""
    assert (site / "backprop" / "index.html").stat().st_size > 10_000
    for page in _docs_pages():
        built = site / ("index.html" if page == "index.md" else pathlib.Path(page).with_suffix("") / "index.html")
        assert built.is_file(), f"docs/{page} was not built"


def _docs_pages() -> set[str]:
    return {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}


def _nav_pages(nav) -> set[str]:
    pages = set()
    for entry in nav:
        for value in (entry.values() if isinstance(entry, dict) else [entry]):
            pages |= _nav_pages(value) if isinstance(value, list) else {value}
    return pages


def test_every_docs_page_is_in_the_nav():
    yaml = pytest.importorskip("yaml")
    nav = yaml.safe_load((ROOT / "mkdocs.yml").read_text())["nav"]
    assert _nav_pages(nav) == _docs_pages(), "mkdocs.yml's nav must list every page in docs/, and only those"


def test_formulas_become_mathml_at_build_time(site):
    page = (site / "backprop" / "index.html").read_text()
    text = re.sub(r"<(pre|code)\b.*?</\1>", "", page, flags=re.DOTALL)  # code may show LaTeX on purpose
    assert page.count("<math") > 100
    assert not re.search(r"\\\(|\\\[|\$\$|\\frac|mathjax|katex", text, re.IGNORECASE), "LaTeX left for the browser"


@pytest.mark.parametrize(("latex", "problem"), [(r"\frac{a}", "<mfrac> got 1 of its 2 arguments"),
                                               (r"\frac{a", "1 unclosed '{'"), ("a^", "MissingSuperScript"),
                                               (r"\nosuchcommand x", r"unknown command \nosuchcommand")])
def test_a_formula_that_does_not_convert_fails_the_build(latex, problem):
    """latex2mathml is lenient (an unknown command comes out as raw LaTeX): docs_markdown refuses instead."""
    markdown = pytest.importorskip("markdown")
    docs_markdown = pytest.importorskip("docs_markdown")
    render = functools.partial(markdown.markdown, extensions=["pymdownx.arithmatex", "docs_markdown"],
                               extension_configs={"pymdownx.arithmatex": {"generic": True}})
    out = render("$\\bar a = \\partial L / \\partial a$\n\n$$\n\\frac{a}{b}\n$$\n")
    assert out.count("<math") == 2 and 'display="block"' in out and "<mfrac>" in out
    with pytest.raises(docs_markdown.MathError) as caught:
        render(f"${latex}$")
    assert str(caught.value).startswith(f"cannot render the formula {latex!r} as MathML: {problem}")


# the attributes whose URL a browser fetches by itself, without the reader following a link
LOADING_ATTRS = {"script": ("src",), "img": ("src", "srcset"), "source": ("src", "srcset"), "iframe": ("src",),
                 "embed": ("src",), "object": ("data",), "video": ("src", "poster"), "audio": ("src",),
                 "track": ("src",), "link": ("href",)}


class _Loads(HTMLParser):
    """Every URL an HTML page makes the browser load: LOADING_ATTRS, ``srcset`` lists, inline ``url(...)``."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = dict(attrs)
        if tag == "link" and not set((values.get("rel") or "").split()) - {"canonical", "alternate", "prev", "next"}:
            return  # navigation metadata, never fetched
        for name in LOADING_ATTRS.get(tag, ()):
            value = values.get(name) or ""
            self.urls += [part.split()[0] for part in value.split(",") if part.strip()] if name == "srcset" else (
                [value] if value else [])
        self.urls += _CSS_URL.findall(values.get("style") or "")


_CSS_URL = re.compile(r"""(?:url\(\s*['"]?|@import\s+['"])([^'")\s]+)""")
_REMOTE = re.compile(r"^(?:[a-z][a-z0-9+.-]*:)?//", re.IGNORECASE)


def test_built_pages_load_nothing_from_another_host(site):
    """No script, style sheet, font, image or frame from another host: the docs read the same offline."""
    remote = []
    for path in site.rglob("*"):
        if path.suffix == ".html":
            parser = _Loads()
            parser.feed(path.read_text())
            urls = parser.urls + _CSS_URL.findall("".join(re.findall(r"<style\b.*?</style>", path.read_text(),
                                                                     flags=re.DOTALL)))
        elif path.suffix == ".css":
            urls = _CSS_URL.findall(path.read_text())
        else:
            continue
        remote += [f"{path.relative_to(site)}: {url}" for url in urls if _REMOTE.match(url)]
    assert not remote, remote


BROWSER_PROBE = """<script>
(() => {
  const maths = [...document.querySelectorAll(".md-content math")];
  const fracs = [...document.querySelectorAll(".md-content math mfrac")];
  const stacked = fracs.filter(f => {
    const [num, den] = [...f.children].map(e => e.getBoundingClientRect());
    return num.height > 0 && den.height > 0 && num.bottom <= den.top + 1;
  });
  const result = {
    math: maths.length, fractions: fracs.length, stacked: stacked.length,
    drawn: maths.filter(m => m.getBoundingClientRect().height > 0).length,
    raw_latex: (document.body.innerText.match(/\\\\[(\\[]|\\\\(frac|partial|bar)\\b|\\$\\$/g) || []).length,
    remote: performance.getEntriesByType("resource").map(e => e.name).filter(u => !u.startsWith("file:")),
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
})();
</script>"""


def _chromium() -> str:
    found = next((shutil.which(name) for name in ("chromium", "chromium-browser", "google-chrome")
                  if shutil.which(name)), None)
    if found is None:
        pytest.skip("no headless Chromium: apt-get install chromium (.ci/run installs it)")
    return found


def test_a_real_browser_draws_the_formulas_offline(site):
    """Headless Chromium with no network opens Backprop by hand: every formula is laid out as MathML."""
    chromium = _chromium()
    page = site / "backprop" / "index.html"
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace("</body>", BROWSER_PROBE + "</body>"))
    result = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                             "--proxy-server=127.0.0.1:9", "--host-resolver-rules=MAP * ~NOTFOUND",
                             "--user-data-dir=" + str(site.parent / "chromium-profile"), "--virtual-time-budget=5000",
                             "--dump-dom", probe.as_uri()], capture_output=True, text=True, timeout=120)
    found = re.search(r'<pre id="probe">(.*?)</pre>', result.stdout)
    assert found, f"Chromium did not run the probe (exit {result.returncode}): {result.stderr[-2000:]}"
    seen = json.loads(html.unescape(found.group(1)))
    assert seen["math"] > 100 and seen["drawn"] == seen["math"], seen
    assert seen["fractions"] > 5 and seen["stacked"] == seen["fractions"], seen   # numerator above denominator
    assert seen["raw_latex"] == 0 and seen["remote"] == [], seen


SKIPPING_TESTS = """
import pytest

@pytest.mark.parametrize("i", range(30))
def test_on_a_gpu(i):
    pytest.skip("cupy: no CUDA device")

@pytest.mark.skip(reason="needs TensorFlow")
@pytest.mark.parametrize("i", range(2))
def test_with_tensorflow(i):
    pass

def test_passes():
    pass

def test_fails():
    assert [1, 2] == [1, 3], "the explanation"
"""


def test_skips_are_summarised_by_reason_and_failures_print_in_full(tmp_path):
    """The README's test command ends on one line per skip reason, not one per skipped test."""
    addopts = re.search(r'^addopts = "([^"]*)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE).group(1)
    (tmp_path / "pytest.ini").write_text(f"[pytest]\naddopts = {addopts}\n")
    shutil.copy(ROOT / "tests" / "conftest.py", tmp_path / "conftest.py")
    (tmp_path / "test_sample.py").write_text(SKIPPING_TESTS)
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=300)
    lines = result.stdout.strip().splitlines()
    assert result.returncode == 1, result.stdout
    assert "32 skipped, by reason" in result.stdout and "SKIPPED [" not in result.stdout, result.stdout
    assert lines.index("30 skipped: cupy: no CUDA device") + 1 == lines.index(" 2 skipped: needs TensorFlow")
    # the failure's summary line follows the skip summary (under CI=true pytest prints it untruncated, over
    # several lines, so it is not always the second-to-last line)
    after_skips = lines[lines.index(" 2 skipped: needs TensorFlow"):]
    assert "AssertionError: the explanation" in result.stdout
    assert any(line.startswith("FAILED test_sample.py::test_fails") for line in after_skips), result.stdout
    assert re.fullmatch(r"1 failed, 1 passed, 32 skipped in [\d.]+s", lines[-1]), lines[-1]


def test_engine_never_imports_tensorflow_and_only_backend_names_array_libraries():
    """tensorflow_datasets (the data extra) is allowed; TensorFlow itself is a test oracle only. backend.py
    is the one module that names array libraries (CuPy, torch); the communicator seam (distributed.py) is
    the one other place for CuPy, for its NCCL, and the only one for mpi4py."""
    forbidden = re.compile(r"^\s*(?:import|from)\s+(tensorflow|torch|cupy|mpi4py)\b(?!_)", re.MULTILINE)
    allowed = {"cupy": {"backend.py", "distributed.py"}, "torch": {"backend.py"}, "mpi4py": {"distributed.py"}}
    offenders = []
    for path in (ROOT / "arraycnn").rglob("*.py"):
        for match in forbidden.finditer(path.read_text()):
            if path.name not in allowed.get(match.group(1), ()):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0).strip()}")
    assert not offenders, offenders


def test_conv2d_backward_defines_the_symbols_of_its_formula():
    """help(conv2d_backward) is read on its own: every matrix its one-line math names is defined there."""
    from arraycnn.functional import conv2d_backward

    doc = conv2d_backward.__doc__
    assert "dW = dYᵀ P" in doc and "dx = col2im(dY W)" in doc
    for symbol in ("P (N*OH*OW, KH*KW*C)", "W (K, KH*KW*C)", "dY (N*OH*OW, K)"):
        assert symbol in doc, symbol
