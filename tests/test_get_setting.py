"""One settings rule: the constructor's value, then SITEMESSAGE_<NAME> (per alias), then the default."""

import pytest

from sitemessage.exceptions import SiteMessageConfigurationError
from sitemessage.messengers.facebook import FacebookMessenger
from sitemessage.messengers.vkontakte import VKontakteMessenger
from sitemessage.settings import check_setting, get_positive_int_setting, get_setting, get_timeout_setting
from tests.fakes import FakeMessenger


def test_the_constructor_value_wins_then_the_setting_then_the_default(settings):
    assert get_setting('HTTP_TIMEOUT') == 10
    settings.SITEMESSAGE_HTTP_TIMEOUT = 3
    assert get_setting('HTTP_TIMEOUT') == 3
    assert get_setting('HTTP_TIMEOUT', value=7) == 7


def test_a_per_alias_setting_is_looked_up_by_alias(settings):
    assert get_setting('PARALLEL_CONNECTIONS', alias='smtp', default=1) == 1
    settings.SITEMESSAGE_PARALLEL_CONNECTIONS = {'smtp': 4}
    assert get_setting('PARALLEL_CONNECTIONS', alias='smtp', default=1) == 4
    assert get_setting('PARALLEL_CONNECTIONS', alias='telegram', default=1) == 1
    assert get_setting('PARALLEL_CONNECTIONS', alias='smtp', value=2, default=1) == 2


def test_a_bad_value_names_the_setting_and_the_value(settings):
    settings.SITEMESSAGE_PARALLEL_CONNECTIONS = {'smtp': 0}
    with pytest.raises(
        SiteMessageConfigurationError,
        match=r"^SITEMESSAGE_PARALLEL_CONNECTIONS\['smtp'\] must be a positive integer, got 0\.$",
    ):
        get_setting('PARALLEL_CONNECTIONS', alias='smtp', check='positive_int')

    settings.SITEMESSAGE_PARALLEL_CONNECTIONS = 4
    with pytest.raises(
        SiteMessageConfigurationError,
        match=r'^SITEMESSAGE_PARALLEL_CONNECTIONS must be a dict keyed by messenger alias, got 4\.$',
    ):
        get_setting('PARALLEL_CONNECTIONS', alias='smtp')


def test_a_bad_constructor_value_names_the_argument():
    with pytest.raises(SiteMessageConfigurationError, match=r"^Thing\(timeout=...\) must be .* got '5'\.$"):
        get_setting('HTTP_TIMEOUT', value='5', check='seconds', argument='Thing(timeout=...)')
    with pytest.raises(SiteMessageConfigurationError, match=r'^the `http_timeout` argument must be'):
        get_setting('HTTP_TIMEOUT', value=-1, check='seconds')


def test_one_validator_for_every_check():
    assert check_setting(None, 'seconds', 'X') is None
    assert check_setting(2.5, 'seconds', 'X') == 2.5
    assert check_setting(3, 'positive_int', 'X') == 3
    assert check_setting('v24.0', 'text', 'X') == 'v24.0'
    for value, check in ((True, 'positive_int'), (1.0, 'positive_int'), (0, 'seconds'), ('', 'text'), (None, 'text')):
        with pytest.raises(SiteMessageConfigurationError, match=f'^X must be .*, got {value!r}.$'):
            check_setting(value, check, 'X')


def test_the_former_helpers_are_thin_wrappers(settings):
    settings.SITEMESSAGE_SEND_BATCH_SIZE = 0
    with pytest.raises(SiteMessageConfigurationError, match=r'^SITEMESSAGE_SEND_BATCH_SIZE must be a positive integer'):
        get_positive_int_setting('SEND_BATCH_SIZE')
    settings.SITEMESSAGE_CONNECT_TIMEOUT = None
    assert get_timeout_setting('CONNECT_TIMEOUT') is None


def test_messengers_follow_the_rule(settings):
    messenger = FakeMessenger()
    assert messenger.get_parallel_connections() == 1
    settings.SITEMESSAGE_PARALLEL_CONNECTIONS = {messenger.get_alias(): 3}
    assert messenger.get_parallel_connections() == 3
    messenger.parallel_connections = 2  # what a constructor's `connections=` does
    assert messenger.get_parallel_connections() == 2
    messenger.parallel_connections = 0
    with pytest.raises(SiteMessageConfigurationError, match=r'parallel connections .* got 0\.$'):
        messenger.get_parallel_connections()

    settings.SITEMESSAGE_FACEBOOK_GRAPH_VERSION = ''
    with pytest.raises(SiteMessageConfigurationError, match=r"^SITEMESSAGE_FACEBOOK_GRAPH_VERSION must be .* got ''"):
        FacebookMessenger('token').graph_version
    assert FacebookMessenger('token', graph_version='23.0').graph_version == 'v23.0'
    with pytest.raises(SiteMessageConfigurationError, match=r'^VKontakteMessenger\(api_version=...\) must be'):
        VKontakteMessenger('token', api_version=True).api_version
