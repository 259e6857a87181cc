// Prometheus metrics for the hl7 tool's long-running commands: a builder of the text
// exposition format (version 0.0.4) and a small HTTP endpoint, on Boost.Beast, that serves
// it at GET /metrics for a monitoring system to scrape.
#pragma once

#include <hl7/error.hpp>

#include <boost/asio/any_io_executor.hpp>
#include <boost/asio/ip/tcp.hpp>

#include <cstdint>
#include <functional>
#include <initializer_list>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <utility>

namespace hl7::tool {

/// The text of one scrape. Families are written one after the other: family() writes the
/// `# HELP` and `# TYPE` lines, then sample() (or histogram()) the samples of that family.
/// Label values are escaped as the format requires (backslash, double quote, newline).
class exposition {
public:
    using labels = std::initializer_list<std::pair<std::string_view, std::string_view>>;

    /// Starts the family `name` of `type` ("counter", "gauge" or "histogram").
    void family(std::string_view name, std::string_view type, std::string_view help);
    /// A sample of the current family (`name` may carry a suffix, e.g. `_total`).
    void sample(std::string_view name, double value, labels l = {});
    /// A whole histogram family: `bounds` are the upper bounds of the buckets (the `+Inf`
    /// bucket is added), `counts` the number of observations in each bucket, not cumulative,
    /// with one more element than `bounds` for the observations above the last bound.
    void histogram(std::string_view name, std::string_view help, std::span<const double> bounds,
                   std::span<const std::uint64_t> counts, double sum, labels l = {});

    const std::string& text() const noexcept { return text_; }

private:
    void write_labels(labels l, std::string_view extra_name = {}, std::string_view extra_value = {});

    std::string text_;
};

/// An HTTP endpoint serving `GET /metrics`; any other path is 404, any other method 405.
/// Requests are bounded (8 KiB of headers, no body), each connection has a 10 s deadline per
/// request and at most 16 connections are served at once (more are closed at accept), so a
/// scraper that misbehaves cannot hold the process's memory or descriptors.
///
/// Thread safety: create and stop from any thread; `collect` runs on the endpoint's strand,
/// one scrape at a time, and must be safe to call while the rest of the program runs.
/// Lifetime: stop() (or destruction) closes the acceptor and every open connection; the
/// executor's context must outlive the work still pending, as usual in Asio.
class metrics_endpoint {
public:
    /// Listens on `where`, `HOST:PORT` (an IP address; IPv6 in brackets; port 0 picks a free
    /// one). Fails with errc::invalid_host or errc::invalid_port for a malformed `where`, or
    /// the bind error.
    static outcome::result<metrics_endpoint> start(boost::asio::any_io_executor ex, std::string_view where,
                                                   std::function<std::string()> collect);

    metrics_endpoint(metrics_endpoint&&) noexcept;
    metrics_endpoint& operator=(metrics_endpoint&&) noexcept;
    ~metrics_endpoint();

    /// The address and port it listens on.
    boost::asio::ip::tcp::endpoint local_endpoint() const;

    /// Stops serving. Idempotent.
    void stop();

private:
    struct state;
    explicit metrics_endpoint(std::shared_ptr<state> s) noexcept;
    std::shared_ptr<state> state_;
};

/// What a command's `--metrics HOST:PORT` does: starts the endpoint at `where`, or throws
/// failure: exit_usage for a malformed address, exit_failed when it cannot listen there.
metrics_endpoint serve_metrics(boost::asio::any_io_executor ex, const std::string& where,
                               std::function<std::string()> collect);

} // namespace hl7::tool
