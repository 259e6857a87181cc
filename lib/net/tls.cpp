#include "net/tls.hpp"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

namespace hl7::detail {

namespace asio = boost::asio;
namespace ssl = boost::asio::ssl;

namespace {

// Settings both sides share: TLS 1.2 at least, no compression (CRIME), no renegotiation.
void harden(ssl::context& ctx)
{
    SSL_CTX_set_min_proto_version(ctx.native_handle(), TLS1_2_VERSION);
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_compression);
    SSL_CTX_set_options(ctx.native_handle(), SSL_OP_NO_RENEGOTIATION);
}

bool use_certificate(ssl::context& ctx, const std::string& certificate, const std::string& key)
{
    boost::system::error_code ec;
    ctx.use_certificate_chain_file(certificate, ec);
    if (!ec)
        ctx.use_private_key_file(key, ssl::context::pem, ec);
    return !ec && SSL_CTX_check_private_key(ctx.native_handle()) == 1;
}

bool use_ciphers(ssl::context& ctx, const std::string& ciphers)
{
    return ciphers.empty() || SSL_CTX_set_cipher_list(ctx.native_handle(), ciphers.c_str()) == 1;
}

} // namespace

outcome::result<std::shared_ptr<ssl::context>> make_client_context(const tls_client_options& options)
{
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_client);
    harden(*ctx);
    boost::system::error_code ec;
    if (!options.ca_file.empty())
        ctx->load_verify_file(options.ca_file, ec);
    if (!ec && !options.ca_directory.empty())
        ctx->add_verify_path(options.ca_directory, ec);
    if (!ec && options.ca_file.empty() && options.ca_directory.empty())
        ctx->set_default_verify_paths(ec);
    if (ec || !use_ciphers(*ctx, options.ciphers))
        return errc::tls_setup_failed;
    if (!options.certificate_file.empty() && !use_certificate(*ctx, options.certificate_file, options.private_key_file))
        return errc::tls_setup_failed;
    ctx->set_verify_mode(options.insecure_skip_verification ? ssl::verify_none : ssl::verify_peer);
    ERR_clear_error();
    return ctx;
}

outcome::result<std::shared_ptr<ssl::context>> make_server_context(const tls_server_options& options)
{
    auto ctx = std::make_shared<ssl::context>(ssl::context::tls_server);
    harden(*ctx);
    if (!use_certificate(*ctx, options.certificate_file, options.private_key_file) || !use_ciphers(*ctx, options.ciphers))
        return errc::tls_setup_failed;
    if (!options.client_ca_file.empty()) {
        boost::system::error_code ec;
        ctx->load_verify_file(options.client_ca_file, ec);
        STACK_OF(X509_NAME)* names = SSL_load_client_CA_file(options.client_ca_file.c_str());
        if (ec || !names)
            return errc::tls_setup_failed;
        SSL_CTX_set_client_CA_list(ctx->native_handle(), names);
        ctx->set_verify_mode(ssl::verify_peer | ssl::verify_fail_if_no_peer_cert);
    }
    ERR_clear_error();
    return ctx;
}

void prepare_client(SSL* ssl, const tls_client_options& options, const host& host)
{
    const std::string& name = options.server_name.empty() ? host.text : options.server_name;
    if (options.insecure_skip_verification)
        return;
    X509_VERIFY_PARAM* param = SSL_get0_param(ssl);
    // RFC 6125: no partial wildcards such as "h*.example.org".
    X509_VERIFY_PARAM_set_hostflags(param, X509_CHECK_FLAG_NO_PARTIAL_WILDCARDS);
    boost::system::error_code not_an_address;
    (void)asio::ip::make_address(name, not_an_address);
    if (!not_an_address) {
        X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
    } else {
        X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0);
        SSL_set_tlsext_host_name(ssl, name.c_str()); // SNI is for names only
    }
}

boost::system::error_code name_tls_error(boost::system::error_code ec, SSL* ssl)
{
    if (ec == ssl::error::stream_truncated || ec == asio::error::eof)
        return errc::tls_handshake_failed; // the peer hung up on the handshake
    if (ec.category() != asio::error::get_ssl_category())
        return ec;
    switch (ERR_GET_REASON(static_cast<unsigned long>(ec.value()))) {
    case SSL_R_CERTIFICATE_VERIFY_FAILED:
        switch (ssl ? SSL_get_verify_result(ssl) : X509_V_OK) {
        case X509_V_ERR_CERT_HAS_EXPIRED:
        case X509_V_ERR_CERT_NOT_YET_VALID:
            return errc::tls_certificate_expired;
        case X509_V_ERR_HOSTNAME_MISMATCH:
        case X509_V_ERR_IP_ADDRESS_MISMATCH:
            return errc::tls_name_mismatch;
        default:
            return errc::tls_untrusted_certificate;
        }
    // The peer's alerts about our certificate.
    case SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED:
        return errc::tls_certificate_expired;
    case SSL_R_TLSV1_ALERT_UNKNOWN_CA:
    case SSL_R_SSLV3_ALERT_BAD_CERTIFICATE:
        return errc::tls_untrusted_certificate;
    case SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE:
    case SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED:
        return errc::tls_no_client_certificate;
    // What a TLS record layer says of bytes that are not TLS records.
    case SSL_R_WRONG_VERSION_NUMBER:
    case SSL_R_HTTP_REQUEST:
    case SSL_R_HTTPS_PROXY_REQUEST:
    case SSL_R_PACKET_LENGTH_TOO_LONG:
    case SSL_R_UNKNOWN_PROTOCOL:
    case SSL_R_RECORD_LENGTH_MISMATCH:
        return errc::tls_plaintext_peer;
    default:
        return errc::tls_handshake_failed;
    }
}

std::vector<std::string> peer_certificate_names(SSL* ssl)
{
    std::vector<std::string> names;
    X509* cert = ssl ? SSL_get_peer_certificate(ssl) : nullptr;
    if (!cert)
        return names;
    auto text = [](const ASN1_STRING* s) {
        return std::string(reinterpret_cast<const char*>(ASN1_STRING_get0_data(s)),
                           static_cast<std::size_t>(ASN1_STRING_length(s)));
    };
    const X509_NAME* subject = X509_get_subject_name(cert);
    for (int i = X509_NAME_get_index_by_NID(subject, NID_commonName, -1); i >= 0;
         i = X509_NAME_get_index_by_NID(subject, NID_commonName, i))
        names.push_back(text(X509_NAME_ENTRY_get_data(X509_NAME_get_entry(subject, i))));
    auto* sans = static_cast<GENERAL_NAMES*>(X509_get_ext_d2i(cert, NID_subject_alt_name, nullptr, nullptr));
    for (int i = 0; sans && i < sk_GENERAL_NAME_num(sans); ++i) {
        const GENERAL_NAME* n = sk_GENERAL_NAME_value(sans, i);
        if (n->type == GEN_DNS) {
            names.push_back(text(n->d.dNSName));
        } else if (n->type == GEN_IPADD) {
            const ASN1_OCTET_STRING* ip = n->d.iPAddress;
            const auto* bytes = ASN1_STRING_get0_data(ip);
            if (ASN1_STRING_length(ip) == 4) {
                asio::ip::address_v4::bytes_type b;
                std::copy(bytes, bytes + 4, b.begin());
                names.push_back(asio::ip::address_v4(b).to_string());
            } else if (ASN1_STRING_length(ip) == 16) {
                asio::ip::address_v6::bytes_type b;
                std::copy(bytes, bytes + 16, b.begin());
                names.push_back(asio::ip::address_v6(b).to_string());
            }
        }
    }
    GENERAL_NAMES_free(sans);
    X509_free(cert);
    return names;
}

} // namespace hl7::detail
