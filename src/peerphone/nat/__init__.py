"""NAT services every supernode runs: a STUN responder and a TURN relay, and the address
filter that keeps the relay from being used to reach private or special networks."""
