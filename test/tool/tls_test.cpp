// `hl7 send` and `hl7 listen` over TLS and mutual TLS, with certificates made at run time.
#include "support/tls_certs.hpp"
#include "support/tool_util.hpp"

#include <doctest/doctest.h>

#include <filesystem>

using namespace hl7::test;

namespace {

const certificates& certs()
{
    return shared_certificates();
}

finished send(const listener& l, std::vector<std::string> args)
{
    // One attempt, and time enough for a handshake on a loaded machine (the refusals here are
    // immediate, none waits for the timeout).
    std::vector<std::string> argv{tool(), "send", "--port", l.port(), "--retries", "1", "--connect-timeout", "10"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back(sample("adt_a01.hl7"));
    return run(argv);
}

} // namespace

TEST_CASE("send and listen exchange a message over TLS")
{
    listener l({"--tls-cert", certs().server_cert, "--tls-key", certs().server_key});
    const auto r = send(l, {"--tls-ca", certs().ca});
    INFO(r.out << r.err);
    CHECK(r.status == 0);
    CHECK(r.out.find(" MSG00001 CA MSG00001 ") != std::string::npos);
    const auto stopped = l.stop();
    CHECK(stopped.status == 0);
    CHECK(stopped.err.find("1 received") != std::string::npos);
}

TEST_CASE("send and listen exchange a message over mutual TLS")
{
    listener l({"--tls-cert", certs().server_cert, "--tls-key", certs().server_key, "--tls-ca", certs().ca});
    const auto r = send(l, {"--tls-ca", certs().ca, "--tls-cert", certs().client_cert, "--tls-key", certs().client_key});
    INFO(r.out << r.err);
    CHECK(r.status == 0);
    CHECK(r.out.find(" CA MSG00001 ") != std::string::npos);
}

TEST_CASE("an untrusted server certificate gives one clear line and exit 1, and nothing is received")
{
    listener l({"--tls-cert", certs().untrusted_cert, "--tls-key", certs().untrusted_key});
    const auto r = send(l, {"--tls-ca", certs().ca});
    CHECK(r.status == 1);
    CHECK(r.err.find("hl7: TLS: peer certificate not trusted") != std::string::npos);
    CHECK(l.stop().err.find("0 received") != std::string::npos);
}

TEST_CASE("a server name that the certificate does not carry is refused")
{
    listener l({"--tls-cert", certs().server_cert, "--tls-key", certs().server_key});
    const auto r = send(l, {"--tls-ca", certs().ca, "--tls-server-name", "hl7.example.org"});
    CHECK(r.status == 1);
    CHECK(r.err.find("does not match the expected name") != std::string::npos);
}

TEST_CASE("a client without a certificate is refused by a mutual TLS listener")
{
    listener l({"--tls-cert", certs().server_cert, "--tls-key", certs().server_key, "--tls-ca", certs().ca});
    const auto r = send(l, {"--tls-ca", certs().ca});
    INFO(r.out << r.err);
    CHECK(r.status == 1);
    CHECK((r.out + r.err).find("requires a client certificate") != std::string::npos);
    CHECK(l.stop().err.find("0 received") != std::string::npos);
}

TEST_CASE("--tls-insecure accepts an untrusted certificate")
{
    listener l({"--tls-cert", certs().untrusted_cert, "--tls-key", certs().untrusted_key});
    const auto r = send(l, {"--tls-insecure"});
    CHECK(r.status == 0);
}

TEST_CASE("TLS files that cannot be loaded are usage errors with one clear line")
{
    listener l;
    const auto r = send(l, {"--tls-ca", certs().dir + "/missing.pem"});
    CHECK(r.status == 2);
    CHECK(r.err.find("hl7: TLS setup failed") != std::string::npos);
    const auto half = send(l, {"--tls-cert", certs().client_cert});
    CHECK(half.status == 2);
    CHECK(half.err.find("--tls-cert and --tls-key go together") != std::string::npos);
    const auto bad_listen = run({tool(), "listen", "--port", "0", "--tls-cert", certs().dir + "/missing.pem", "--tls-key",
                                 certs().server_key});
    CHECK(bad_listen.status == 2);
    CHECK(bad_listen.err.find("hl7: TLS setup failed") != std::string::npos);
    const auto no_key = run({tool(), "listen", "--port", "0", "--tls"});
    CHECK(no_key.status == 2);
    CHECK(no_key.err.find("TLS needs --tls-cert and --tls-key") != std::string::npos);
}
