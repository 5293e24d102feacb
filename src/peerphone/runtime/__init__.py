"""Real-network runtime: sockets, clocks and QUIC links around the sans-I/O overlay cores."""
