"""The web wallet (``cardnet wallet ui``): a page on 127.0.0.1 for a person with a card on their host.

:mod:`.session` decides who may use the page (a one-time login link exchanged by the page's script for a session
secret the tab keeps and sends in ``Authorization``, no cookie; the Host and Origin checks); :mod:`.wallet` is the
page and its small JSON API over the wallet library. See docs/web-wallet.md.
"""
