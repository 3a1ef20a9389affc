"""Readable plain text from HTML, for the text/plain part of HTML e-mails.

Hand-written on the stdlib parser (about 60 lines) rather than a dependency: html2text is GPL,
and the job is small — keep paragraphs and line breaks, show link targets, drop markup.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

_BLOCK_TAGS = {
    'p',
    'div',
    'br',
    'tr',
    'table',
    'ul',
    'ol',
    'li',
    'h1',
    'h2',
    'h3',
    'h4',
    'h5',
    'h6',
    'hr',
    'blockquote',
    'pre',
    'section',
    'article',
    'header',
    'footer',
    'title',
}
_SKIPPED_TAGS = {'head', 'style', 'script', 'template'}


class _TextExtractor(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skip_depth = 0
        self.links: list[str] = []
        self.preformatted = 0

    def handle_starttag(self, tag, attrs):
        if tag in _SKIPPED_TAGS:
            self.skip_depth += 1
        elif tag in _BLOCK_TAGS:
            self.chunks.append('\n')
            if tag == 'li':
                self.chunks.append('* ')
            elif tag == 'hr':
                self.chunks.append('-' * 20 + '\n')
            elif tag == 'pre':
                self.preformatted += 1
        if tag == 'a':
            self.links.append(dict(attrs).get('href') or '')
        elif tag == 'img':  # <img ...> as well as <img ... />
            alt = dict(attrs).get('alt')
            if alt:
                self.chunks.append(alt)

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)

    def handle_endtag(self, tag):
        if tag in _SKIPPED_TAGS:
            self.skip_depth = max(self.skip_depth - 1, 0)
        elif tag in _BLOCK_TAGS:
            self.chunks.append('\n')
            if tag == 'pre':
                self.preformatted = max(self.preformatted - 1, 0)
        elif tag == 'a' and self.links:
            href = self.links.pop()
            if href and not href.startswith('#') and href not in ''.join(self.chunks[-3:]):
                self.chunks.append(f' ({href})')

    def handle_data(self, data):
        if self.skip_depth:
            return
        self.chunks.append(data if self.preformatted else re.sub(r'\s+', ' ', data))


def html_to_text(html: str) -> str:
    """Return a readable plain text rendering of ``html``."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    lines = [line.strip() for line in ''.join(parser.chunks).splitlines()]
    text = '\n'.join(lines)
    return re.sub(r'\n{3,}', '\n\n', text).strip()
