"""Make the demo certificates that etc/tls.ini points at: python etc/tls/make-demo-certs.py

Everything here is for trying the gateway out and for the etc/ example test:
a private demo CA (its key is not kept), an intermediate, certificates for
www.example.com (RSA and ECDSA, served with their chain), *.example.com, and a
client certificate for the mTLS listener.  Never use these keys for anything
real: they are published with the source.  Running the script again replaces
them all (10 years of validity from today).

Try it:  twistd -n gateway --config etc/tls.ini   (needs a backend on 127.0.0.1:8000)
         curl --cacert etc/tls/demo-ca.pem --resolve www.example.com:8443:127.0.0.1 \\
              https://www.example.com:8443/
"""

from __future__ import annotations

import datetime
import os

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

HERE = os.path.dirname(os.path.abspath(__file__))
NOW = datetime.datetime.now(datetime.timezone.utc)
YEARS = datetime.timedelta(days=3650)


def name(common: str) -> x509.Name:
    return x509.Name([
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "gateway DEMO - not for real use"),
        x509.NameAttribute(NameOID.COMMON_NAME, common),
    ])


def issue(subject: str, key, issuer: str, issuer_key, *, ca: bool = False, dns=(), client=False):
    builder = (
        x509.CertificateBuilder()
        .subject_name(name(subject))
        .issuer_name(name(issuer))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(NOW - datetime.timedelta(hours=1))
        .not_valid_after(NOW + YEARS)
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
            critical=False,
        )
    )
    if ca:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
    if dns:
        builder = builder.add_extension(
            x509.SubjectAlternativeName([x509.DNSName(d) for d in dns]), critical=False
        )
    if not ca:
        usage = ExtendedKeyUsageOID.CLIENT_AUTH if client else ExtendedKeyUsageOID.SERVER_AUTH
        builder = builder.add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def write(filename: str, *items) -> None:
    data = b""
    for item in items:
        if isinstance(item, x509.Certificate):
            data += item.public_bytes(serialization.Encoding.PEM)
        else:
            data += item.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
    with open(os.path.join(HERE, filename), "wb") as file:
        file.write(data)


def main() -> None:
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = issue("gateway demo root CA", ca_key, "gateway demo root CA", ca_key, ca=True)
    int_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = issue("gateway demo intermediate CA", int_key, "gateway demo root CA", ca_key, ca=True)
    write("demo-ca.pem", ca)
    write("demo-chain.pem", intermediate)

    www = ("www.example.com", "example.com")
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    write("www-rsa.pem", issue("www.example.com", rsa_key, "gateway demo intermediate CA", int_key, dns=www))
    write("www-rsa.key", rsa_key)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    write("www-ecdsa.pem", issue("www.example.com", ec_key, "gateway demo intermediate CA", int_key, dns=www))
    write("www-ecdsa.key", ec_key)

    wild_key = ec.generate_private_key(ec.SECP256R1())
    # A "full chain" file: the certificate, then its intermediate.
    wild = issue("*.example.com", wild_key, "gateway demo intermediate CA", int_key, dns=("*.example.com",))
    write("wildcard.pem", wild, intermediate)
    write("wildcard.key", wild_key)

    client_key = ec.generate_private_key(ec.SECP256R1())
    write("client.pem", issue("demo client", client_key, "gateway demo root CA", ca_key, client=True))
    write("client.key", client_key)


if __name__ == "__main__":
    main()
