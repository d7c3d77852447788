"""Test support, shared by the product tests, the self-checks (tests/selfcheck/) and bench/:
real peers on loopback (mosquitto.py, tinyproxy in http_proxy.py), a generated PKI (certs.py),
the one MQTT codec for tests and bench (packets.py), a scripted broker for byte-level cases
(fake_broker.py), a fault-injecting proxy (fault_proxy.py), TLS and WebSocket fronts
(tls_server.py, fronts.py), AWS service fakes (aws_fakes.py), the client factory
(clients.py) and what Python 3.9 lacks (compat.py)."""
