/* sitemessage in-app inbox: actions without a page reload, and polling for new items.

   The page works without this script (its forms POST and come back). With it, the forms of
   [data-sitemessage-action] are sent with fetch() and the page updates in place; every
   data-poll-seconds (SITEMESSAGE_INBOX_POLL_SECONDS) the JSON feed is fetched, every
   [data-sitemessage-inbox-unread] badge shows the unread count, and a link offers new items.
   Text from the server only ever goes in with textContent, never as HTML. */
(function () {
    'use strict';

    var root = document.querySelector('[data-sitemessage-inbox]');
    if (!root) { return; }

    function setUnread(count) {
        document.querySelectorAll('[data-sitemessage-inbox-unread]').forEach(function (badge) {
            badge.textContent = String(count);
            badge.classList.toggle('is-zero', count === 0);
        });
    }

    function markItemRead(item) {
        item.classList.remove('is-unread');
        var form = item.querySelector('[data-sitemessage-action="read"]');
        if (form) { form.remove(); }
    }

    function applied(form, action) {
        var item = form.closest('[data-item-id]');
        if (action === 'archive' && item) {
            item.remove();
        } else if (action === 'read' && item) {
            markItemRead(item);
        } else if (action === 'read-all') {
            root.querySelectorAll('[data-item-id]').forEach(markItemRead);
        }
    }

    root.addEventListener('submit', function (event) {
        var form = event.target;
        var action = form.getAttribute('data-sitemessage-action');
        if (!action) { return; }
        event.preventDefault();
        var token = form.querySelector('input[name="csrfmiddlewaretoken"]');
        fetch(form.action, {
            method: 'POST',
            credentials: 'same-origin',
            headers: {'Accept': 'application/json', 'X-CSRFToken': token ? token.value : ''},
            body: new FormData(form)
        }).then(function (response) {
            if (!response.ok) { throw new Error('HTTP ' + response.status); }
            return response.json();
        }).then(function (data) {
            applied(form, action);
            setUnread(data.unread);
        }).catch(function () {
            form.submit();  // fall back to the plain form post
        });
    });

    var seconds = parseFloat(root.getAttribute('data-poll-seconds'));
    if (!(seconds > 0)) { return; }
    var newest = parseInt(root.getAttribute('data-newest-id') || '0', 10);
    var notice = root.querySelector('[data-sitemessage-inbox-new]');

    function poll() {
        fetch(root.getAttribute('data-json-url'), {credentials: 'same-origin', headers: {'Accept': 'application/json'}})
            .then(function (response) { return response.ok ? response.json() : null; })
            .then(function (data) {
                if (!data) { return; }
                setUnread(data.unread);
                if (notice && data.items.length && data.items[0].id > newest) { notice.hidden = false; }
            })
            .catch(function () {});
    }
    window.setInterval(poll, seconds * 1000);
}());
