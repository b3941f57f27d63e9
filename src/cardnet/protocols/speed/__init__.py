"""SPEED (Ruiz et al.): smartcard e-purse payment with negotiation and encrypted product delivery, sans-I/O.

One module an idea: ``purse`` (the e-purse and SAM sub-protocol S1/S2/S3 and loading), ``messages``
(the purchase messages of section 4 and their codes), ``negotiation`` (the customer's and the vendor's
negotiation machines and the strategy interface), ``bill`` (bill, payment order and receipt, as CMS
SignedData). See docs/speed.md.
"""
