"""The web wallet (``cardnet wallet ui``): a page on 127.0.0.1 for a person with a card on their host.

:mod:`.session` decides who may use the page (a one-time login link, a session cookie, a CSRF token, the Host and
Origin checks); :mod:`.wallet` is the page and its small JSON API over the wallet library. See docs/web-wallet.md.
"""
