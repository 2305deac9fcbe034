"""
A DNS interface to the registry, on Twisted Names: C{masse dns},
C{twistd masse-dns}, or L{txmasse.dns.service.DNSService} in an
application's service tree. See docs/dns.md.

Kept empty so that the C{masse} command can add its C{dns} arguments
without loading Twisted Names: import the modules themselves
(L{txmasse.dns.service}, L{txmasse.dns.authority}, L{txmasse.dns.labels}).
"""
