"""Text for people: counted nouns that agree with their count, and `--help` wrapped at one width. Needs the standard
library only, so the command line uses it before torch is imported."""
import argparse
import re
import textwrap
from typing import List, Optional

__all__ = ['HelpFormatter', 'plural']


def plural(count: int, noun: str, plural_noun: Optional[str] = None) -> str:
    """`count` and `noun` in the number it takes: '1 image', '0 images', '1,001 images' (`plural_noun` where adding
    an s is wrong)."""
    return f'{count:,} {noun if count == 1 else plural_noun or noun + "s"}'


def _wrap(text: str, width: int, indent: str = '', first: str = '', rest: str = '') -> List[str]:
    """`text`'s words in lines of at most `width` characters (a longer word alone on its line), never broken at a
    hyphen (`--no-amp`, `T2T-ViT` stay whole)."""
    return textwrap.wrap(' '.join(text.split()), width, initial_indent=indent + first, subsequent_indent=indent + rest,
                         break_long_words=False, break_on_hyphens=False)


class HelpFormatter(argparse.HelpFormatter):
    """argparse's help at argparse's width (the terminal's less 2, 78 when it is not a terminal), with descriptions
    and epilogs kept in their paragraphs (argparse's own joins them into one) and each wrapped at that width. A
    paragraph of '- ' items is wrapped item by item; one whose lines are all indented (commands, examples) is kept as
    written. Options and descriptions are never broken at a hyphen."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        paragraphs = []
        for paragraph in textwrap.dedent(text).strip('\n').split('\n\n'):
            lines = paragraph.splitlines()
            if all(line.startswith(' ') for line in lines):
                paragraphs.append('\n'.join(indent + line for line in lines))
            elif lines[0].startswith('- '):
                items = re.split(r'\n(?=- )', paragraph)
                paragraphs.append('\n'.join(
                    line for item in items for line in _wrap(item[2:], width, indent, first='- ', rest='  ')))
            else:
                paragraphs.append('\n'.join(_wrap(paragraph, width, indent)))
        return '\n\n'.join(paragraphs)

    def _split_lines(self, text: str, width: int) -> List[str]:
        return _wrap(text, width)
