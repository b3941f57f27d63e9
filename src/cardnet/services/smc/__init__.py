"""smc on hosts: the Controller and Clock that drive a TrustedPals security module's rounds."""
