// What the outbox commands share (hl7 send --outbox and hl7 outbox ...): the flags that open
// an outbox and say how delivery gives up, times as they are written and read, the lines that
// show a record, and the test-only pause points.
#pragma once

#include <hl7/outbox/outbox.hpp>

#include <boost/asio/any_io_executor.hpp>

#include <CLI/CLI.hpp>

#include <atomic>
#include <chrono>
#include <functional>
#include <future>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <tuple>

namespace hl7::tool {

class message_reader;

/// --outbox, --synchronous, --schema and (for outbox run) --lease-ttl.
struct outbox_flags {
    std::string path;
    std::string synchronous = "full";
    std::string schema = "hl7_outbox";
    double lease_ttl = 30; ///< seconds

    /// Defines --outbox (required or not), --schema and, for commands that store, --synchronous.
    void define(CLI::App& command, bool required, bool stores);
    /// Defines --lease-ttl.
    void define_lease(CLI::App& command);

    /// Opens the outbox (throws failure: usage for a bad --synchronous, failed for an outbox
    /// that cannot be opened). `must_exist`: an SQLite file that does not exist is an error
    /// rather than created (for the commands that only read or administer).
    outbox open(boost::asio::any_io_executor ex, bool must_exist,
                std::function<void(const outbox_event&)> observer = {}) const;
};

/// --max-attempts and --max-age: when delivery gives a failing message up (dead letter).
struct retry_flags {
    unsigned max_attempts = 0;
    std::string max_age;

    void define(CLI::App& command);
    /// The retry policy they say (throws failure, usage, for a bad --max-age).
    outbox_retry_policy policy() const;
};

/// A duration as `<number><unit>`, the unit one of ms, s, m, h, d, w: `7d`, `12h`, `500ms`.
std::optional<std::chrono::milliseconds> parse_duration(std::string_view text);

/// TIME: an ISO 8601 date or date and time (`2024-05-01`, `2024-05-01T12:30:00Z`,
/// `2024-05-01T12:30:00.5+02:00`; UTC without an offset), or a duration meaning that long
/// before `now` (`7d`).
std::optional<outbox_clock::time_point> parse_time(std::string_view text, outbox_clock::time_point now);

/// ISO 8601 in UTC with milliseconds: `2024-05-01T12:30:00.000Z`.
std::string iso8601(outbox_clock::time_point t);

/// `<id> <destination> <lane> <MSH-10> <state> <attempts> <MSA-1> <enqueued at>`, then
/// `possible-duplicate` when flagged and the error if any; "-" for what is absent.
std::string record_text(const outbox_record& r);
/// The same as one JSON object.
std::string record_json(const outbox_record& r);

/// What a final record says as the result of a send: the error text a NACK or a failure gets
/// (empty for an acknowledged message).
std::string outcome_error(const outbox_record& r);

/// Starts an outbox operation with `start(handler)` and blocks until its handler ran (on the
/// io_context's thread): its error and results. (as_tuple does not adapt use_future in Boost
/// 1.81.)
template <class... Results, class Start>
std::tuple<boost::system::error_code, Results...> wait_for(Start start)
{
    std::promise<std::tuple<boost::system::error_code, Results...>> done;
    auto result = done.get_future();
    start([done = std::move(done)](boost::system::error_code ec, Results... r) mutable {
        done.set_value({ec, std::move(r)...});
    });
    return result.get();
}

/// One message of an input, once the outbox took it (or refused it).
struct stored_message {
    std::int64_t id = 0; ///< 0: not stored; `error` says why
    std::optional<std::string> control_id;
    std::uint32_t lane = 0;
    outbox_state state = outbox_state::queued;
    bool duplicate = false; ///< it was already in the outbox
    std::string error;
};

/// Stores every message `reader` gives for `to`, many at once so that they share commits, and
/// calls `done` for each, in input order, on the calling thread. A message that cannot be
/// stored (it does not parse, has no MSH-10, conflicts with a stored one) is reported with its
/// error and the rest go on; a failure of the store throws failure once the messages before
/// it were reported (they are stored).
void store_input(outbox& box, const outbox_destination& to, const enqueue_options& options, message_reader& reader,
                 const std::string& path, const std::function<void(std::size_t index, const stored_message&)>& done);

/// Test-only fault injection, inert unless HL7_OUTBOX_PAUSE is set to `<point>:<n>`: at the
/// n-th time the process reaches `point` it writes `hl7: paused at <point> <n>` to standard
/// error and stops there until it is killed. Points: `committing` (a group commit is about to
/// be made durable), `written` (a message was recorded written, not yet handed over), `sent`
/// (a message was written on the wire, its ACK not read), `acknowledged` (its ACK was read,
/// not yet recorded).
class pause_points {
public:
    /// From the environment; a pause point that never pauses when the variable is unset.
    static std::shared_ptr<pause_points> from_environment();

    /// The process reached `point`.
    void reached(std::string_view point);
    void on(const outbox_event& e);
    void on(const connection_event& e);

private:
    std::string point_;
    std::uint64_t at_ = 0;
    std::atomic<std::uint64_t> count_{0};
};

} // namespace hl7::tool
