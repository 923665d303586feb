"""The documentation holds together: README.md and the pages under docs/.

Every relative link resolves to a file or folder of the repository, and every `#anchor` to a heading of its page
(anchors as GitHub makes them from headings). The README stays a front door: at most 250 lines, with the set-up
block near its top, and its test command is the one CI (`.ci/run`) runs. The digits command for timm's train.py on
docs/timm-scripts.md is the one `benchmarks/small_data.py --timm-scripts` runs.
"""
import re
import shlex
from pathlib import Path
from typing import Dict, Iterator, List, Set, Tuple

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / 'README.md'
DOCS = REPO / 'docs'
PAGES = [README, *sorted(DOCS.glob('*.md'))]
CI_SCRIPT = REPO / '.ci' / 'run'

README_MAX_LINES = 250
SETUP_WITHIN_LINES = 40
SETUP_FIRST_LINE = 'python3 -m venv .venv'

_FENCE = re.compile(r'^\s*(```|~~~)')
_HEADING = re.compile(r'^(#{1,6})\s+(.+?)\s*#*\s*$')
_INLINE_CODE = re.compile(r'(`+)(.+?)\1')
_LINK = re.compile(r'!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)')
_SCHEME = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*:')


def prose_lines(text: str) -> Iterator[Tuple[int, str]]:
    """(line number from 1, line) for the lines outside fenced code blocks."""
    fenced = False
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def code_blocks(text: str) -> List[Tuple[int, List[str]]]:
    """(line number of the opening fence, the block's lines) for each fenced code block."""
    blocks, current, start = [], None, 0
    for number, line in enumerate(text.splitlines(), start=1):
        if _FENCE.match(line):
            if current is None:
                current, start = [], number
            else:
                blocks.append((start, current))
                current = None
        elif current is not None:
            current.append(line)
    return blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (inline code and links as their text), lowercased, punctuation
    removed except `-` and `_`, spaces made `-`."""
    text = _INLINE_CODE.sub(lambda m: m.group(2), heading)
    text = re.sub(r'!?\[([^\]]*)\]\([^)]*\)', r'\1', text)
    text = re.sub(r'[^\w\- ]', '', text.strip().lower())
    return text.replace(' ', '-')


def anchors(path: Path) -> Set[str]:
    """The anchors of a page's headings; a repeated heading's get -1, -2, ... as on GitHub."""
    seen: Dict[str, int] = {}
    found = set()
    for _, line in prose_lines(path.read_text(encoding='utf-8')):
        match = _HEADING.match(line)
        if match is None:
            continue
        base = slug(match.group(2))
        count = seen.get(base, 0)
        seen[base] = count + 1
        found.add(base if count == 0 else f'{base}-{count}')
    return found


def links(path: Path) -> List[Tuple[int, str]]:
    """(line number, target) of each Markdown link and image in the page's prose (not in code)."""
    found = []
    for number, line in prose_lines(path.read_text(encoding='utf-8')):
        line = _INLINE_CODE.sub('', line)
        found += [(number, match.group(1)) for match in _LINK.finditer(line)]
    return found


def broken_links(path: Path, root: Path = REPO) -> List[str]:
    """Each relative link of the page that does not resolve, as 'page:line: target (why)'."""
    problems = []
    for number, target in links(path):
        if _SCHEME.match(target) or target.startswith('//'):
            continue  # a web address: not checked here
        file_part, _, anchor = target.partition('#')
        where = f'{path.relative_to(root)}:{number}: {target}'
        linked = (path.parent / file_part).resolve() if file_part else path
        if root.resolve() not in (linked, *linked.parents):
            problems.append(f'{where} (outside the repository)')
        elif not linked.exists():
            problems.append(f'{where} (no such file or folder)')
        elif anchor and linked.suffix != '.md':
            problems.append(f'{where} (an anchor into a file that is not Markdown)')
        elif anchor and anchor not in anchors(linked):
            problems.append(f'{where} (no heading with that anchor in {linked.relative_to(root.resolve())})')
    return problems


@pytest.mark.parametrize('heading, anchor', [
    ('What "exact" covers', 'what-exact-covers'),
    ("Feature maps: the paper's Figure 2, and its claim measured",
     'feature-maps-the-papers-figure-2-and-its-claim-measured'),
    ('The tokenizer on its own: T2TPatchEmbed', 'the-tokenizer-on-its-own-t2tpatchembed'),
    ("timm's scripts: train.py, validate.py, benchmark.py", 'timms-scripts-trainpy-validatepy-benchmarkpy'),
    ('Use `t2t_vit_14` from Python', 'use-t2t_vit_14-from-python'),
    ('🤗 transformers', '-transformers'),
])
def test_anchors_are_made_as_github_makes_them(heading, anchor):
    assert slug(heading) == anchor


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / 'docs').mkdir()
    (tmp_path / 'docs' / 'other.md').write_text('# Other page\n\n## A section\n\n## A section\n')
    page = tmp_path / 'docs' / 'page.md'
    page.write_text('\n'.join([
        '# Page', '',
        '[fine](other.md) [fine](other.md#a-section) [fine](other.md#a-section-1) [fine](#page) [web](https://x.org)',
        '`[not a link](nowhere.md)`', '```', '[in code](nowhere.md)', '```',
        '[gone](missing.md)', '[no anchor](other.md#a-sectio)', '![no image](../img.png)', '[out](../../up.md)',
    ]))
    assert broken_links(page, root=tmp_path) == [
        'docs/page.md:8: missing.md (no such file or folder)',
        'docs/page.md:9: other.md#a-sectio (no heading with that anchor in docs/other.md)',
        'docs/page.md:10: ../img.png (no such file or folder)',
        'docs/page.md:11: ../../up.md (outside the repository)',
    ]


def test_there_are_pages_to_check():
    assert README.is_file() and len(PAGES) > 1
    assert all(links(page) for page in PAGES), 'every page links somewhere'


@pytest.mark.parametrize('page', PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_resolves(page):
    assert broken_links(page) == []


@pytest.mark.parametrize('page', sorted(DOCS.glob('*.md')), ids=lambda page: page.name)
def test_every_page_is_linked_from_the_readme(page):
    assert f'docs/{page.name}' in {target.partition('#')[0] for _, target in links(README)}


def test_the_readme_is_a_front_door():
    text = README.read_text(encoding='utf-8')
    assert len(text.splitlines()) <= README_MAX_LINES
    setup = [(start, lines) for start, lines in code_blocks(text) if lines and lines[0].startswith(SETUP_FIRST_LINE)]
    assert setup, f'no code block starting with {SETUP_FIRST_LINE!r}'
    start, _ = setup[0]
    assert start + 1 <= SETUP_WITHIN_LINES, f'the set-up block starts on line {start + 1}'


def ci_test_command() -> str:
    """The command with which .ci/run runs the full suite: its line that ends in a bare `python -m pytest`."""
    commands = [line.strip() for line in CI_SCRIPT.read_text(encoding='utf-8').splitlines()
                if re.search(r'(^|&&\s*)python -m pytest$', line.strip())]
    assert len(commands) == 1, commands
    return commands[0]


@pytest.mark.skipif(not CI_SCRIPT.is_file(), reason='no .ci/run (a source distribution does not carry it)')
def test_the_readme_runs_the_tests_as_ci_does():
    command = ci_test_command()
    assert command == '. .venv/bin/activate && pip install -e ".[test]" && python -m pytest'
    text = README.read_text(encoding='utf-8')
    setup_block = next(lines for _, lines in code_blocks(text) if lines and lines[0].startswith(SETUP_FIRST_LINE))
    assert command in [line.strip() for line in setup_block]


def test_the_timm_scripts_page_trains_the_digits_by_the_recorded_recipe():
    """The command in float32, which runs on every CPU, and the flags to add where bf16 is faster."""
    from benchmarks.small_data import RUNS, Recipe, timm_script_args

    page = (DOCS / 'timm-scripts.md').read_text(encoding='utf-8')
    command = re.search(r'^python train\.py \$DIGITS .*?[^\\]$', page, flags=re.MULTILINE | re.DOTALL).group(0)
    words = shlex.split(command.replace('\\\n', ' '))
    option = dict(zip(words, words[1:]))
    in_fp32, _ = timm_script_args(RUNS[0], Path('$DIGITS'), Path(option['--output']), Recipe(amp=False))
    in_bf16, _ = timm_script_args(RUNS[0], Path('$DIGITS'), Path(option['--output']), Recipe(amp=True))
    assert words[2:] == in_fp32 and in_bf16[:len(in_fp32)] == in_fp32
    after = page[page.index(command) + len(command):]
    end = after.find('\n\n', 5)  # the paragraph after the code block
    assert f'add `{" ".join(in_bf16[len(in_fp32):])}`' in after[:end if end >= 0 else None]
