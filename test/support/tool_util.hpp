// Helpers for the tests that drive the built hl7 tool: where it is, a running `hl7 listen`,
// loopback sockets that refuse or never answer, and small messages to send.
#pragma once

#include "support/process.hpp"

#include <doctest/doctest.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

namespace hl7::test {

/// The hl7 binary under test (meson passes its path in HL7_TOOL).
inline const std::string& tool()
{
    static const std::string path = env_path("HL7_TOOL");
    return path;
}

/// A file of the repository's samples/ directory.
inline std::string sample(const std::string& name)
{
    return std::string(HL7_SAMPLES_DIR) + "/" + name;
}

/// A small message with control id `id`, segments ended by `eol`.
inline std::string small_message(const std::string& id, const std::string& eol = "\r",
                                 const std::string& type = "ADT^A01")
{
    return "MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||" + type + "|" + id + "|P|2.5.1" + eol + "PID|1||" + id +
           "^^^FAC^MR||DOE^JOHN" + eol;
}

/// A fresh directory under the system's temporary directory, removed with its contents.
class temp_dir {
public:
    temp_dir()
    {
        std::string pattern = (std::filesystem::temp_directory_path() / "hl7-tool-test-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path_ = pattern;
    }
    temp_dir(const temp_dir&) = delete;
    temp_dir& operator=(const temp_dir&) = delete;
    ~temp_dir()
    {
        std::error_code ignored;
        std::filesystem::remove_all(path_, ignored);
    }

    const std::filesystem::path& path() const { return path_; }

    /// Writes `bytes` to a file in the directory and returns its path.
    std::string write(const std::string& name, const std::string& bytes) const
    {
        const auto file = path_ / name;
        std::ofstream(file, std::ios::binary) << bytes;
        return file.string();
    }

private:
    std::filesystem::path path_;
};

/// The names of the files in `dir`.
inline std::set<std::string> names_in(const std::filesystem::path& dir)
{
    std::set<std::string> names;
    for (const auto& entry : std::filesystem::directory_iterator(dir))
        names.insert(entry.path().filename().string());
    return names;
}

/// A running `hl7 listen --port 0 ...`, its first line already read.
class listener {
public:
    explicit listener(const std::vector<std::string>& options = {}, const std::string& host = "127.0.0.1")
        : proc_(command(options, host))
    {
        auto line = proc_.read_line(30s);
        REQUIRE_MESSAGE(line.has_value(), "hl7 listen printed no first line within 30 s");
        first_line_ = *line;
        const std::size_t colon = first_line_.rfind(':');
        REQUIRE(first_line_.starts_with("listening on "));
        REQUIRE(colon != std::string::npos);
        port_ = std::stoi(first_line_.substr(colon + 1));
        REQUIRE(port_ > 0);
    }

    const std::string& first_line() const { return first_line_; }
    std::string port() const { return std::to_string(port_); }
    child& process() { return proc_; }

    /// Sends `sig` and waits for the listener to end.
    finished stop(int sig = SIGTERM)
    {
        proc_.signal(sig);
        return proc_.wait(10s);
    }

private:
    static std::vector<std::string> command(const std::vector<std::string>& options, const std::string& host)
    {
        std::vector<std::string> argv{tool(), "listen", "--port", "0", "--host", host};
        argv.insert(argv.end(), options.begin(), options.end());
        return argv;
    }

    child proc_;
    std::string first_line_;
    int port_ = 0;
};

/// A TCP socket bound to a loopback port, closed on destruction. Until listen() is called,
/// connections to the port are refused.
class loopback_socket {
public:
    explicit loopback_socket(bool v6 = false) : fd_(::socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0))
    {
        if (fd_ < 0)
            return;
        sockaddr_storage addr{};
        socklen_t len = 0;
        if (v6) {
            auto* a = reinterpret_cast<sockaddr_in6*>(&addr);
            a->sin6_family = AF_INET6;
            a->sin6_addr = in6addr_loopback;
            len = sizeof *a;
        } else {
            auto* a = reinterpret_cast<sockaddr_in*>(&addr);
            a->sin_family = AF_INET;
            a->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            len = sizeof *a;
        }
        if (::bind(fd_, reinterpret_cast<sockaddr*>(&addr), len) != 0 ||
            ::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) != 0) {
            ::close(fd_);
            fd_ = -1;
            return;
        }
        port_ = ntohs(v6 ? reinterpret_cast<sockaddr_in6*>(&addr)->sin6_port
                         : reinterpret_cast<sockaddr_in*>(&addr)->sin_port);
    }
    loopback_socket(const loopback_socket&) = delete;
    loopback_socket& operator=(const loopback_socket&) = delete;
    ~loopback_socket()
    {
        if (fd_ >= 0)
            ::close(fd_);
    }

    bool bound() const { return fd_ >= 0; }
    std::string port() const { return std::to_string(port_); }
    /// Listens without ever accepting: connections complete in the backlog and nobody answers.
    void listen() { REQUIRE(::listen(fd_, 16) == 0); }

private:
    int fd_;
    std::uint16_t port_ = 0;
};

/// The port of the metrics endpoint a command named on its standard error ("metrics at
/// http://127.0.0.1:PORT/metrics"); 0 when it named none.
inline int metrics_port(const std::string& err)
{
    const std::string mark = "metrics at http://127.0.0.1:";
    const auto at = err.find(mark);
    return at == std::string::npos ? 0 : std::atoi(err.c_str() + at + mark.size());
}

/// The port of the metrics endpoint `c` names on its standard error, waiting (at most 30 s)
/// for the line: it may come after lines of standard output the test has already read.
inline int metrics_port(child& c)
{
    REQUIRE_MESSAGE(c.wait_for_err("/metrics\n", 30s), "no metrics line on standard error: " << c.err());
    return metrics_port(c.err());
}

/// A plain HTTP GET of `path` from 127.0.0.1:`port`: the whole response, empty when nobody
/// answers.
inline std::string http_get(int port, const std::string& path = "/metrics")
{
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    std::string response;
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0) {
        const std::string request = "GET " + path + " HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n";
        if (::write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size())) {
            char buf[4096];
            ssize_t n;
            while ((n = ::read(fd, buf, sizeof buf)) > 0)
                response.append(buf, static_cast<std::size_t>(n));
        }
    }
    ::close(fd);
    return response;
}

} // namespace hl7::test
