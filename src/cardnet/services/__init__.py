"""Services: long-running parties (vendors, brokers, authorities) over a Store and the transport layer."""
