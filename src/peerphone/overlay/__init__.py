"""Sans-I/O overlay cores: membership, directory, attachment, election.

No module in this package reads a clock, a socket or the global random: time arrives as
`now`, randomness as an injected `random.Random`.
"""
