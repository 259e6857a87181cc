// Throwaway certificates for the TLS tests, made at run time (no private key is committed):
// a CA, a server certificate for localhost/127.0.0.1/::1, a client certificate, an expired
// server certificate, one for the wrong name, and one from a CA nobody trusts.
#pragma once

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <stdexcept>
#include <string>

namespace hl7::test {

struct certificates {
    std::string dir;
    std::string ca;                              ///< the trusted CA
    std::string server_cert, server_key;         ///< localhost, 127.0.0.1, ::1
    std::string client_cert, client_key;         ///< a client of the trusted CA
    std::string expired_cert, expired_key;       ///< localhost, expired yesterday
    std::string wrong_name_cert, wrong_name_key; ///< wrong.example only
    std::string untrusted_cert, untrusted_key;   ///< localhost, from an untrusted CA
};

namespace detail_certs {

using key_ptr = std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)>;
using cert_ptr = std::unique_ptr<X509, decltype(&X509_free)>;

inline key_ptr new_key()
{
    key_ptr key(EVP_EC_gen("P-256"), &EVP_PKEY_free);
    if (!key)
        throw std::runtime_error("cannot generate a key");
    return key;
}

inline void add_extension(X509* cert, X509* issuer, int nid, const char* value)
{
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
    X509_EXTENSION* ext = X509V3_EXT_conf_nid(nullptr, &ctx, nid, value);
    if (!ext)
        throw std::runtime_error("cannot make a certificate extension");
    X509_add_ext(cert, ext, -1);
    X509_EXTENSION_free(ext);
}

// A certificate for `key`, signed by `issuer_key` (self-signed when issuer is null), valid
// from `from_days` to `to_days` around now.
inline cert_ptr new_cert(const char* common_name, EVP_PKEY* key, X509* issuer, EVP_PKEY* issuer_key, const char* san,
                         bool ca, long from_days = -1, long to_days = 30)
{
    static long serial = 1;
    cert_ptr cert(X509_new(), &X509_free);
    X509_set_version(cert.get(), 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert.get()), serial++);
    X509_gmtime_adj(X509_getm_notBefore(cert.get()), from_days * 24 * 3600);
    X509_gmtime_adj(X509_getm_notAfter(cert.get()), to_days * 24 * 3600);
    X509_set_pubkey(cert.get(), key);
    X509_NAME* name = X509_get_subject_name(cert.get());
    X509_NAME_add_entry_by_txt(name, "O", MBSTRING_ASC, reinterpret_cast<const unsigned char*>("hl7-client tests"), -1,
                               -1, 0);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, reinterpret_cast<const unsigned char*>(common_name), -1, -1, 0);
    X509_set_issuer_name(cert.get(), issuer ? X509_get_subject_name(issuer) : name);
    X509* signer = issuer ? issuer : cert.get();
    if (ca) {
        add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:TRUE");
        add_extension(cert.get(), signer, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_extension(cert.get(), signer, NID_basic_constraints, "critical,CA:FALSE");
        add_extension(cert.get(), signer, NID_ext_key_usage, "serverAuth,clientAuth");
    }
    add_extension(cert.get(), signer, NID_subject_key_identifier, "hash");
    if (san)
        add_extension(cert.get(), signer, NID_subject_alt_name, san);
    if (!X509_sign(cert.get(), issuer_key ? issuer_key : key, EVP_sha256()))
        throw std::runtime_error("cannot sign a certificate");
    return cert;
}

inline void write(const std::string& path, X509* cert, EVP_PKEY* key)
{
    FILE* f = std::fopen(path.c_str(), "w");
    if (!f)
        throw std::runtime_error("cannot write " + path);
    if (cert)
        PEM_write_X509(f, cert);
    if (key)
        PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
    std::fclose(f);
}

} // namespace detail_certs

/// Makes a fresh set in a new temporary directory (under $TMPDIR or /tmp).
inline certificates make_certificates()
{
    using namespace detail_certs;
    const char* tmp = std::getenv("TMPDIR");
    std::string pattern = std::string(tmp && *tmp ? tmp : "/tmp") + "/hl7-certs-XXXXXX";
    if (!mkdtemp(pattern.data()))
        throw std::runtime_error("cannot make a temporary directory");
    certificates c;
    c.dir = pattern;
    auto file = [&](const char* name) { return c.dir + "/" + name; };

    auto ca_key = new_key();
    auto ca = new_cert("hl7-client test CA", ca_key.get(), nullptr, nullptr, nullptr, true, -1, 3650);
    auto other_key = new_key();
    auto other = new_cert("untrusted test CA", other_key.get(), nullptr, nullptr, nullptr, true, -1, 3650);
    const char* local = "DNS:localhost,IP:127.0.0.1,IP:::1";

    c.ca = file("ca.pem");
    write(c.ca, ca.get(), nullptr);
    auto issue = [&](const char* cn, X509* issuer, EVP_PKEY* issuer_key, const char* san, long from, long to,
                     std::string& cert_path, std::string& key_path, const char* stem) {
        auto key = new_key();
        auto cert = new_cert(cn, key.get(), issuer, issuer_key, san, false, from, to);
        cert_path = file((std::string(stem) + ".pem").c_str());
        key_path = file((std::string(stem) + "-key.pem").c_str());
        write(cert_path, cert.get(), nullptr);
        write(key_path, nullptr, key.get());
    };
    issue("localhost", ca.get(), ca_key.get(), local, -1, 30, c.server_cert, c.server_key, "server");
    issue("test client", ca.get(), ca_key.get(), "DNS:client.test", -1, 30, c.client_cert, c.client_key, "client");
    issue("localhost", ca.get(), ca_key.get(), local, -30, -1, c.expired_cert, c.expired_key, "expired");
    issue("wrong.example", ca.get(), ca_key.get(), "DNS:wrong.example", -1, 30, c.wrong_name_cert, c.wrong_name_key,
          "wrong-name");
    issue("localhost", other.get(), other_key.get(), local, -1, 30, c.untrusted_cert, c.untrusted_key, "untrusted");
    return c;
}

/// One set for the whole process, made on first use and removed at exit.
inline const certificates& shared_certificates()
{
    static const struct owner : certificates {
        owner() : certificates(make_certificates()) {}
        owner(const owner&) = delete;
        ~owner() { std::filesystem::remove_all(dir); }
    } set;
    return set;
}

} // namespace hl7::test
