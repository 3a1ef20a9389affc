"""HTML to readable plain text (sitemessage/plaintext.py), the text/plain part of HTML e-mails."""

from __future__ import annotations

import pytest

from sitemessage.plaintext import html_to_text


def test_paragraphs_and_headings_become_lines_and_blank_lines_collapse():
    html = '<h1>Title</h1><p>First   paragraph,\n   wrapped.</p><div></div><div></div><p>Second</p>'
    assert html_to_text(html) == 'Title\n\nFirst paragraph, wrapped.\n\nSecond'


def test_line_breaks_in_both_spellings():
    assert html_to_text('one<br>two<br/>three<br />four') == 'one\ntwo\nthree\nfour'


def test_list_items_are_bulleted_lines():
    html = '<p>Do:</p><ul><li>first</li><li>second\n  <b>bold</b></li></ul><ol><li>third</li></ol>'
    assert html_to_text(html) == 'Do:\n\n* first\n\n* second bold\n\n* third'


def test_links_show_their_target_once():
    html = (
        '<p>Read <a href="https://example.com/post">the post</a>, '
        '<a href="https://example.com/">https://example.com/</a>, '
        '<a href="#top">back to top</a>, <a>no href</a> and <a href="">empty</a>.</p>'
    )
    assert html_to_text(html) == (
        'Read the post (https://example.com/post), https://example.com/, back to top, no href and empty.'
    )


def test_nested_links_pop_their_own_targets():
    html = '<a href="https://a.example/">outer <a href="https://b.example/">inner</a> tail</a>'
    assert html_to_text(html) == 'outer inner (https://b.example/) tail (https://a.example/)'


def test_entities_and_character_references_are_decoded():
    html = '<p>Tom &amp; Jerry &lt;3 &quot;cheese&quot; &#8212; caf&eacute; &#x263A;</p>'
    assert html_to_text(html) == 'Tom & Jerry <3 "cheese" \u2014 caf\u00e9 \u263a'


def test_non_breaking_spaces_count_as_spaces():
    assert html_to_text('<p>10&nbsp;kg &nbsp; &nbsp;net</p>') == '10 kg net'


@pytest.mark.parametrize('tag', ['script', 'style', 'head', 'template'])
def test_invisible_elements_are_dropped(tag):
    html = f'<p>before</p><{tag}>hidden <b>text</b> var a = 1 &lt; 2;</{tag}><p>after</p>'
    assert html_to_text(html) == 'before\n\nafter'


def test_nested_and_stray_closing_invisible_tags():
    html = (
        '<head><title>T</title><style>p {}</style><script>x()</script>still head</head>'
        '</script><p>shown</p><template><style>a</style>inner</template>end'
    )
    assert html_to_text(html) == 'shown\nend'


def test_preformatted_text_keeps_its_spaces_and_line_breaks():
    html = '<p>Code:</p><pre>def f():\n    return  1</pre><p>after   it</p>'
    assert html_to_text(html) == 'Code:\n\ndef f():\nreturn  1\n\nafter it'


def test_horizontal_rule_is_a_line_of_dashes():
    assert html_to_text('above<hr>below<hr/>end') == 'above\n' + '-' * 20 + '\nbelow\n' + '-' * 20 + '\nend'


@pytest.mark.parametrize('img', ['<img src="logo.png" alt="Shop logo"/>', '<img src="logo.png" alt="Shop logo">'])
def test_images_show_their_alt_text_however_the_tag_is_written(img):
    assert html_to_text(f'<p>{img} Welcome</p><p><img src="spacer.gif"></p>') == 'Shop logo Welcome'


def test_a_whole_email_document():
    html = """<!DOCTYPE html><html><head><meta charset="utf-8"><title>News</title>
    <style>body { color: red }</style></head>
    <body>
      <table><tr><td>Hello&nbsp;Ann,</td></tr>
      <tr><td>Our <a href="https://shop.example/sale">sale</a> starts today.</td></tr></table>
      <script>track()</script>
    </body></html>"""
    assert html_to_text(html) == 'Hello Ann,\n\nOur sale (https://shop.example/sale) starts today.'


def test_plain_text_and_empty_input():
    assert html_to_text('just text,   no markup') == 'just text, no markup'
    assert html_to_text('') == ''
    assert html_to_text('   \n  ') == ''
