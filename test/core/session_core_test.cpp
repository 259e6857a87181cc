// The server's I/O-free session core, stepped with a made-up clock: no sockets, no sleeps.
// Each step's actions are compared whole with the sequence expected.
#include "core/session_core.hpp"

#include <hl7/model/ack.hpp>

#include "support/util.hpp"

#include <boost/asio/error.hpp>

#include <doctest/doctest.h>

#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

using namespace std::chrono_literals;
using hl7::errc;
using hl7::message;
using core_clock = hl7::detail::clock;
using hl7::detail::owned_server_event;
using hl7::detail::session_config;
using hl7::detail::session_core;
using action = hl7::detail::session_action;
using akind = action::kind;
using ekind = hl7::server_event::kind;
using boost::system::error_code;
namespace asio = boost::asio;

namespace {

std::string describe(const action& a)
{
    std::ostringstream o;
    switch (a.what()) {
    case akind::handshake: o << "handshake"; break;
    case akind::read: o << "read"; break;
    case akind::handle: o << "handle(" << a.message().control_id() << ")"; break;
    case akind::write: o << "write(" << a.bytes().size() << " bytes)"; break;
    case akind::close: o << "close(" << a.reason().message() << ")"; break;
    case akind::notify: {
        const auto& e = a.event();
        o << "notify(" << static_cast<int>(e.what) << " '" << e.control_id << "' " << e.error.message() << " '"
          << e.detail << "' +" << e.suppressed << ")";
        break;
    }
    case akind::arm_timer:
        o << "arm_timer("
          << (a.deadline() == core_clock::time_point::max()
                  ? std::string("never")
                  : std::to_string(std::chrono::duration_cast<std::chrono::milliseconds>(a.deadline().time_since_epoch())
                                       .count()) + " ms")
          << ")";
        break;
    case akind::done: o << "done"; break;
    }
    return o.str();
}

} // namespace

namespace doctest {
template <>
struct StringMaker<action> {
    static String convert(const action& a) { return String(describe(a).c_str()); }
};
template <>
struct StringMaker<std::vector<action>> {
    static String convert(const std::vector<action>& v)
    {
        std::string s = "[";
        for (const action& a : v)
            s += (s.size() > 1 ? ", " : "") + describe(a);
        return String((s + "]").c_str());
    }
};
} // namespace doctest

namespace {

// A std::string, not a literal: `"\x0b" + std::string(...)` inserts at the front, which GCC 12
// takes for an overlapping copy (a false -Wrestrict).
const std::string start_block(1, '\x0b');

const asio::ip::tcp::endpoint peer{asio::ip::make_address("192.0.2.1"), 4000};
const core_clock::time_point t0 = core_clock::time_point{} + 1h;

std::string adt(std::string_view control_id, std::string_view extra = "")
{
    return "MSH|^~\\&|SND|FAC|RCV|FAC|20240101120000||ADT^A01^ADT_A01|" + std::string(control_id) + "|P|2.5.1" +
           std::string(extra) + "\rPID|1||42\r";
}

std::string ack_of(std::string_view control_id)
{
    return "MSH|^~\\&|RCV|FAC|SND|FAC|20240101120000||ACK^A01^ACK|R" + std::string(control_id) + "|P|2.5.1\rMSA|AA|" +
           std::string(control_id) + "\r";
}

message parsed(const std::string& text)
{
    return message::parse(text).value();
}

session_config defaults()
{
    session_config c;
    c.max_segments = 100;
    c.max_fields = 1000;
    c.max_bad_frames = 3;
    c.idle_timeout = 300s;
    c.frame_timeout = 60s;
    c.write_timeout = 30s;
    c.close_timeout = 10s;
    c.observed = true;
    return c;
}

owned_server_event ev(ekind what, std::string control_id = {}, error_code error = {}, std::string detail = {},
                      std::uint64_t suppressed = 0)
{
    return {what, peer, std::move(control_id), error, std::move(detail), suppressed};
}

// A session core with its shared state and a clock, and what it asked for so far.
struct harness {
    explicit harness(session_config c = defaults(), std::size_t budget = 0)
        : config(std::move(c)), shared(budget)
    {
    }

    // Starts the session; returns its first actions.
    std::vector<action> start()
    {
        core.emplace(config, shared, peer, now);
        return take();
    }

    std::vector<action> take()
    {
        std::vector<action> out;
        action a;
        while (core->next(a))
            out.push_back(a);
        for (const action& x : out)
            if (x.what() == akind::arm_timer)
                timer = x.deadline();
        check_invariants();
        return out;
    }

    std::vector<action> receive(const std::string& bytes)
    {
        chunk = bytes; // what a read buffer would hold until the next read
        core->received(chunk, now);
        return take();
    }

    std::vector<action> frames(const std::vector<std::string>& payloads)
    {
        std::string bytes;
        for (const auto& p : payloads)
            bytes += hl7::mllp::encode(p);
        return receive(bytes);
    }

    std::vector<action> reply_with(const std::string& text)
    {
        handler_reply = parsed(text);
        core->handled(*handler_reply, now);
        return take();
    }

    std::vector<action> written(error_code ec = {})
    {
        core->written(ec, now);
        return take();
    }

    // Runs the clock to `t` (firing the timer on the way as often as it is due).
    std::vector<action> advance_to(core_clock::time_point t)
    {
        std::vector<action> all;
        while (timer <= t) {
            now = timer;
            timer = core_clock::time_point::max();
            core->timer_fired(now);
            auto acts = take();
            all.insert(all.end(), acts.begin(), acts.end());
        }
        now = t;
        return all;
    }

    void check_invariants()
    {
        // The timer is never armed later than what is due.
        CHECK(core->armed() <= core->due());
        CHECK(shared.budget.used() == core->charged());
    }

    session_config config;
    hl7::detail::server_shared shared;
    std::optional<session_core> core;
    core_clock::time_point now = t0;
    core_clock::time_point timer = core_clock::time_point::max();
    std::string chunk;
    std::optional<message> handler_reply;
};

// The parsed frame the core answered with.
message written_reply(const std::vector<action>& acts)
{
    for (const action& a : acts)
        if (a.what() == akind::write)
            return parsed(std::string(a.bytes()));
    FAIL("no write among the actions");
    return {};
}

// The action at `i`, for elements whose content is checked apart (generated replies).
action at(const std::vector<action>& acts, std::size_t i)
{
    REQUIRE(i < acts.size());
    return acts[i];
}

} // namespace

TEST_CASE("a plaintext connection is reported and starts reading, with the idle deadline armed")
{
    harness h;
    CHECK(h.start() == std::vector{action::notify(ev(ekind::accepted)), action::read(), action::arm_timer(t0 + 300s)});
}

TEST_CASE("a message goes to the handler, its reply is written, and only then is the next read asked for")
{
    harness h;
    h.start();
    const message m = parsed(adt("A1"));
    CHECK(h.frames({adt("A1")}) == std::vector{action::notify(ev(ekind::received, "A1")), action::handle(m)});
    CHECK(h.reply_with(ack_of("A1")) == std::vector{action::write(ack_of("A1")), action::arm_timer(t0 + 30s)});
    CHECK(h.written() == std::vector{action::notify(ev(ekind::replied, "A1")), action::read()});
    const auto c = h.shared.stats.snapshot();
    CHECK(c.received == 1);
    CHECK(c.replied == 1);
    CHECK(c.replies_by_code[static_cast<std::size_t>(hl7::ack_code::AA)] == 1);
    CHECK(c.bytes_received == hl7::mllp::encode(adt("A1")).size());
    CHECK(c.bytes_sent == ack_of("A1").size() + 3);
    CHECK(c.errors == 0);
}

TEST_CASE("messages that arrive together are handled one at a time and answered in order")
{
    harness h;
    h.start();
    CHECK(h.frames({adt("A"), adt("B")}) ==
          std::vector{action::notify(ev(ekind::received, "A")), action::handle(parsed(adt("A")))});
    CHECK(h.reply_with(ack_of("A")) == std::vector{action::write(ack_of("A")), action::arm_timer(t0 + 30s)});
    CHECK(h.written() == std::vector{action::notify(ev(ekind::replied, "A")), action::notify(ev(ekind::received, "B")),
                                     action::handle(parsed(adt("B")))});
    CHECK(h.reply_with(ack_of("B")) == std::vector{action::write(ack_of("B"))});
    CHECK(h.written() == std::vector{action::notify(ev(ekind::replied, "B")), action::read()});
}

TEST_CASE("a frame that does not parse but has an MSH-10 is answered with AE and HL7 error 100")
{
    harness h;
    h.start();
    const std::string bad = "MSH|^^~\\&|SND|FAC|RCV|FAC|20240101||ADT^A01|BAD1|P|2.5.1\rPID|1\r";
    const auto acts = h.frames({bad});
    const message ae = written_reply(acts);
    CHECK(acts == std::vector{action::notify(ev(ekind::unparsable, "BAD1", errc::invalid_encoding_characters)),
                              at(acts, 1), action::arm_timer(t0 + 30s)});
    CHECK(ae.get("MSA.1") == "AE");
    CHECK(ae.get("MSA.2") == "BAD1");
    CHECK(ae.get("ERR.3.1") == "100");
    CHECK(ae.get("MSA.3").value().decoded() == make_error_code(errc::invalid_encoding_characters).message());
    CHECK(h.written() == std::vector{action::notify(ev(ekind::replied, "BAD1")), action::read()});
    CHECK(h.shared.stats.snapshot().errors == 1);
}

TEST_CASE("a frame without a readable header is dropped and reported, and reading goes on")
{
    harness h;
    h.start();
    CHECK(h.frames({"not HL7"}) == std::vector{action::notify(ev(ekind::unparsable, "", errc::not_hl7)), action::read()});
    CHECK(h.frames({""}) == std::vector{action::notify(ev(ekind::unparsable, "", errc::not_hl7)), action::read()});
    const auto c = h.shared.stats.snapshot();
    CHECK(c.received == 2);
    CHECK(c.replied == 0);
    CHECK(c.errors == 2);
}

TEST_CASE("oversized and cut-short frames are dropped and reported")
{
    auto config = defaults();
    config.max_frame = 16;
    harness h(config);
    h.start();
    // The rest of an oversized frame is dropped up to the next start block, under the frame
    // timeout as a frame would be.
    CHECK(h.receive(start_block + std::string(20, 'x') + "\x1c\r") ==
          std::vector{action::notify(ev(ekind::bad_frame, "", errc::frame_too_large)), action::read(),
                      action::arm_timer(t0 + 60s)});
    h.now += 1s;
    CHECK(h.receive("\x0b" "abc\x0b") ==
          std::vector{action::notify(ev(ekind::bad_frame, "", errc::invalid_frame)), action::read()});
    CHECK(h.core->due() == t0 + 61s); // the frame begun at the second 0x0B
    const auto c = h.shared.stats.snapshot();
    CHECK(c.bad_frames == 2);
    CHECK(c.errors == 2);
    CHECK(c.received == 0);
}

TEST_CASE("an acknowledgement is never acknowledged: it is reported and counted, and the handler never sees it")
{
    harness h;
    h.start();
    CHECK(h.frames({ack_of("X1"), ack_of("X2")}) ==
          std::vector{action::notify(ev(ekind::ack_ignored, "RX1")), action::notify(ev(ekind::ack_ignored, "RX2")),
                      action::read()});
    const auto c = h.shared.stats.snapshot();
    CHECK(c.acks_ignored == 2);
    CHECK(c.received == 2);
    CHECK(c.replied == 0);
    CHECK(c.errors == 0);
}

TEST_CASE("a handler that asks for no acknowledgement gets none sent, and the next message follows")
{
    harness h;
    h.start();
    h.frames({adt("N1"), adt("N2")});
    h.core->handled(errc::no_ack_requested, h.now);
    CHECK(h.take() == std::vector{action::notify(ev(ekind::received, "N2")), action::handle(parsed(adt("N2")))});
    CHECK(h.shared.stats.snapshot().errors == 0);
}

TEST_CASE("a handler's error or exception is answered with AE 207 and a generic text; its details go to the observer")
{
    const std::string generic = "the message could not be processed; the receiver's log has the details";
    SUBCASE("an error")
    {
        harness h;
        h.start();
        h.frames({adt("E1")});
        h.core->handled(boost::system::errc::make_error_code(boost::system::errc::no_such_file_or_directory), h.now);
        const auto acts = h.take();
        CHECK(acts == std::vector{action::notify(ev(ekind::handler_error, "E1",
                                                    boost::system::errc::make_error_code(
                                                        boost::system::errc::no_such_file_or_directory),
                                                    "No such file or directory")),
                                  at(acts, 1), action::arm_timer(t0 + 30s)});
        const message ae = written_reply(acts);
        CHECK(ae.get("MSA.1") == "AE");
        CHECK(ae.get("MSA.2") == "E1");
        CHECK(ae.get("ERR.3.1") == "207");
        CHECK(ae.get("ERR.8").value().decoded() == generic);
    }
    SUBCASE("an exception")
    {
        harness h;
        h.start();
        h.frames({adt("E2")});
        h.core->handler_threw("cannot open /var/lib/secret/db: permission denied", h.now);
        const auto acts = h.take();
        CHECK(acts == std::vector{action::notify(ev(ekind::handler_error, "E2", errc::handler_failed,
                                                    "cannot open /var/lib/secret/db: permission denied")),
                                  at(acts, 1), action::arm_timer(t0 + 30s)});
        const message ae = written_reply(acts);
        CHECK(ae.str().find("/var/lib") == std::string_view::npos);
        CHECK(ae.get("ERR.8").value().decoded() == generic);
    }
    SUBCASE("a reply that would break its frame")
    {
        harness h;
        h.start();
        h.frames({adt("E3")});
        h.core->handled(parsed("MSH|^~\\&|A|B|C|D|2024||ACK^A01^ACK|Z|P|2.5.1\rMSA|AA|E3|cut\x1cshort\r"), h.now);
        const auto acts = h.take();
        REQUIRE(acts.size() == 3);
        CHECK(acts[0].event().error == errc::block_byte_in_message);
        CHECK(written_reply(acts).get("MSA.1") == "AE");
    }
}

TEST_CASE("a message with more segments or fields than allowed is refused with AR before it is parsed")
{
    harness h; // at most 100 segments, 1000 fields
    h.start();
    std::string many = adt("BIG");
    for (int i = 0; i < 100; ++i)
        many += "NTE|" + std::to_string(i) + "\r";
    auto acts = h.frames({many});
    CHECK(acts == std::vector{action::notify(ev(ekind::limit_reached, "BIG", errc::message_too_complex, "103 segments")),
                              at(acts, 1), action::arm_timer(t0 + 30s)});
    const message ar = written_reply(acts);
    CHECK(ar.get("MSA.1") == "AR");
    CHECK(ar.get("MSA.2") == "BIG");
    CHECK(ar.get("ERR.3.1") == "207");
    h.written();

    const std::string wide = adt("WIDE", std::string(1000, '|'));
    acts = h.frames({wide});
    CHECK(at(acts, 0) == action::notify(ev(ekind::limit_reached, "WIDE", errc::message_too_complex,
                                           "1014 field separators")));
    h.written();
    const auto c = h.shared.stats.snapshot();
    CHECK(c.limits[static_cast<std::size_t>(hl7::server_limit::max_segments)] == 1);
    CHECK(c.limits[static_cast<std::size_t>(hl7::server_limit::max_fields)] == 1);
    CHECK(c.replies_by_code[static_cast<std::size_t>(hl7::ack_code::AR)] == 2);
}

TEST_CASE("a connection sending max_bad_frames bad frames in a row is closed; a message in between starts the count again")
{
    harness h; // max_bad_frames = 3
    h.start();
    h.frames({"", ""});
    h.frames({adt("OK")});
    h.reply_with(ack_of("OK"));
    h.written();
    CHECK(h.frames({"", ""}) == std::vector{action::notify(ev(ekind::unparsable, "", errc::not_hl7)),
                                             action::notify(ev(ekind::unparsable, "", errc::not_hl7)), action::read()});
    CHECK(h.frames({""}) == std::vector{action::notify(ev(ekind::unparsable, "", errc::not_hl7)),
                                         action::notify(ev(ekind::limit_reached, "", errc::too_many_bad_frames)),
                                         action::close(errc::too_many_bad_frames), action::arm_timer(core_clock::time_point::max()),
                                         action::notify(ev(ekind::disconnected, "", errc::too_many_bad_frames)),
                                         action::done()}); // no read was outstanding
    CHECK(h.shared.stats.snapshot().limits[static_cast<std::size_t>(hl7::server_limit::max_bad_frames)] == 1);
}

TEST_CASE("the idle timeout closes a connection that begins no message; bytes outside frames do not count")
{
    harness h;
    h.start();
    h.now += 200s;
    CHECK(h.receive("keep-alive noise") == std::vector{action::read()});
    CHECK(h.advance_to(t0 + 300s) ==
          std::vector{action::notify(ev(ekind::timed_out, "", errc::idle_timeout)), action::close(errc::idle_timeout),
                      action::notify(ev(ekind::disconnected, "", errc::idle_timeout))});
    h.core->read_failed(asio::error::operation_aborted, h.now);
    CHECK(h.take() == std::vector{action::done()});
}

TEST_CASE("each message starts the idle wait again")
{
    harness h;
    h.start();
    h.now += 299s;
    h.frames({adt("LATE")});
    h.reply_with(ack_of("LATE"));
    h.written();
    CHECK(h.advance_to(t0 + 598s).empty() == false); // the timer set for t0 + 300 s only arms itself again
    CHECK_FALSE(h.core->closed());
    const auto acts = h.advance_to(t0 + 599s);
    CHECK(at(acts, 0) == action::notify(ev(ekind::timed_out, "", errc::idle_timeout)));
}

TEST_CASE("the frame timeout closes a connection whose frame does not end in time, however steadily its bytes come")
{
    harness h;
    h.start();
    CHECK(h.receive("\x0bMSH|") == std::vector{action::read(), action::arm_timer(t0 + 60s)});
    for (int i = 1; i < 60; ++i) {
        h.now = t0 + std::chrono::seconds(i);
        CHECK(h.receive("x") == std::vector{action::read()});
    }
    CHECK(h.advance_to(t0 + 60s) ==
          std::vector{action::notify(ev(ekind::timed_out, "", errc::frame_timeout)), action::close(errc::frame_timeout),
                      action::notify(ev(ekind::disconnected, "", errc::frame_timeout))});
    CHECK(h.shared.stats.snapshot().limits[static_cast<std::size_t>(hl7::server_limit::frame_timeout)] == 1);
}

TEST_CASE("a frame that ends in time is answered, and the next frame's clock starts when it is seen")
{
    harness h;
    h.start();
    const std::string frame = hl7::mllp::encode(adt("F1"));
    h.receive(frame.substr(0, 10));
    h.now = t0 + 59s;
    h.receive(frame.substr(10) + "\x0bMSH|");
    h.reply_with(ack_of("F1"));
    CHECK(h.written() == std::vector{action::notify(ev(ekind::replied, "F1")), action::read()});
    CHECK(h.advance_to(t0 + 118s) == std::vector{action::arm_timer(t0 + 119s)});
    CHECK_FALSE(h.core->closed());
    CHECK(at(h.advance_to(t0 + 119s), 0) == action::notify(ev(ekind::timed_out, "", errc::frame_timeout)));
}

TEST_CASE("the write timeout closes a connection whose peer does not read its reply")
{
    harness h;
    h.start();
    h.frames({adt("W1")});
    h.reply_with(ack_of("W1"));
    CHECK(h.advance_to(t0 + 30s) == std::vector{action::notify(ev(ekind::timed_out, "W1", errc::write_timeout)),
                                                 action::close(errc::write_timeout),
                                                 action::notify(ev(ekind::disconnected, "", errc::write_timeout))});
    CHECK(h.written(asio::error::operation_aborted) == std::vector{action::done()});
    CHECK(h.shared.stats.snapshot().replied == 0);
}

TEST_CASE("no timeout applies while the handler runs")
{
    harness h;
    h.start();
    h.frames({adt("SLOW")});
    CHECK(h.advance_to(t0 + 24h).empty()); // the idle deadline armed before passes unheeded
    CHECK(h.reply_with(ack_of("SLOW")) == std::vector{action::write(ack_of("SLOW")), action::arm_timer(t0 + 24h + 30s)});
}

TEST_CASE("a zero timeout turns that timeout off")
{
    auto config = defaults();
    config.idle_timeout = {};
    config.frame_timeout = {};
    config.write_timeout = {};
    harness h(config);
    CHECK(h.start() == std::vector{action::notify(ev(ekind::accepted)), action::read()});
    h.receive("\x0bMSH|");
    CHECK(h.timer == core_clock::time_point::max());
}

TEST_CASE("the TLS handshake's deadline is the core's timer, and its expiry closes the connection")
{
    auto config = defaults();
    config.tls = true;
    config.handshake_timeout = 10s;
    harness h(config);
    CHECK(h.start() ==
          std::vector{action::notify(ev(ekind::accepted)), action::handshake(), action::arm_timer(t0 + 10s)});
    CHECK(h.advance_to(t0 + 10s) == std::vector{action::notify(ev(ekind::handshake_failed, "", errc::tls_handshake_timeout)),
                                                 action::close(errc::tls_handshake_timeout),
                                                 action::notify(ev(ekind::disconnected, "", errc::tls_handshake_timeout))});
    h.core->handshake_failed(asio::error::operation_aborted, h.now);
    CHECK(h.take() == std::vector{action::done()});
    CHECK(h.shared.stats.snapshot().limits[static_cast<std::size_t>(hl7::server_limit::handshake_timeout)] == 1);
}

TEST_CASE("a failed handshake is reported with its reason and closes the connection")
{
    auto config = defaults();
    config.tls = true;
    config.handshake_timeout = 10s;
    harness h(config);
    h.start();
    h.core->handshake_failed(errc::tls_plaintext_peer, h.now);
    CHECK(h.take() == std::vector{action::notify(ev(ekind::handshake_failed, "", errc::tls_plaintext_peer)),
                                  action::close(errc::tls_plaintext_peer), action::arm_timer(core_clock::time_point::max()),
                                  action::notify(ev(ekind::disconnected, "", errc::tls_plaintext_peer)), action::done()});
}

TEST_CASE("a client certificate that carries no allowed name is refused after the handshake; an allowed one is kept")
{
    auto config = defaults();
    config.tls = true;
    config.handshake_timeout = 10s;
    config.allowed_client_names = {"lab.example.org", "Test Client"};
    SUBCASE("refused")
    {
        harness h(config);
        h.start();
        h.core->handshake_done({"intruder", "evil.example"}, h.now);
        CHECK(h.take() ==
              std::vector{action::notify(ev(ekind::refused, "", errc::tls_client_not_allowed,
                                            "certificate names: intruder, evil.example")),
                          action::close(errc::tls_client_not_allowed), action::arm_timer(core_clock::time_point::max()),
                          action::notify(ev(ekind::disconnected, "", errc::tls_client_not_allowed)), action::done()});
    }
    SUBCASE("let in by its CN, compared without regard to case")
    {
        harness h(config);
        h.start();
        h.core->handshake_done({"test client", "client.test"}, h.now);
        CHECK(h.take() == std::vector{action::read()});
        CHECK(h.core->client_name() == "Test Client");
    }
    SUBCASE("a name with a NUL inside is not the name before it")
    {
        harness h(config);
        h.start();
        h.core->handshake_done({std::string("lab.example.org\0.evil", 21)}, h.now);
        CHECK(h.core->closed());
    }
}

TEST_CASE("stop closes a connection waiting for a message at once, half-read frame included")
{
    harness h;
    h.start();
    h.receive("\x0bMSH|^~\\&|");
    h.core->stop(h.now);
    CHECK(h.take() == std::vector{action::close(errc::closed), action::arm_timer(core_clock::time_point::max()),
                                  action::notify(ev(ekind::disconnected, "", errc::closed))});
    h.core->read_failed(asio::error::operation_aborted, h.now);
    CHECK(h.take() == std::vector{action::done()});
}

TEST_CASE("stop lets the running handler finish and its reply be written, then closes; frames behind it are dropped")
{
    harness h;
    h.start();
    h.frames({adt("S1"), adt("S2")});
    h.core->stop(h.now);
    CHECK(h.take() == std::vector{action::arm_timer(t0 + 10s)});
    CHECK(h.reply_with(ack_of("S1")) == std::vector{action::write(ack_of("S1"))});
    CHECK(h.written() == std::vector{action::notify(ev(ekind::replied, "S1")), action::close(errc::closed),
                                     action::arm_timer(core_clock::time_point::max()),
                                     action::notify(ev(ekind::disconnected, "", errc::closed)), action::done()});
}

TEST_CASE("stop closes a connection still busy after the close timeout, and the session ends when the handler returns")
{
    harness h;
    h.start();
    h.frames({adt("STUCK")});
    h.core->stop(h.now);
    h.take();
    CHECK(h.advance_to(t0 + 10s) == std::vector{action::close(errc::closed),
                                                 action::notify(ev(ekind::disconnected, "", errc::closed))});
    CHECK(h.reply_with(ack_of("STUCK")) == std::vector{action::done()}); // nothing written after the close
    CHECK(h.shared.stats.snapshot().replied == 0);
}

TEST_CASE("stopping twice, or after the close, changes nothing")
{
    harness h;
    h.start();
    h.core->stop(h.now);
    h.take();
    h.core->stop(h.now);
    CHECK(h.take().empty());
}

TEST_CASE("the peer closing ends the session at once")
{
    harness h;
    h.start();
    h.core->read_failed(asio::error::eof, h.now);
    CHECK(h.take() == std::vector{action::close(asio::error::eof), action::arm_timer(core_clock::time_point::max()),
                                  action::notify(ev(ekind::disconnected, "", asio::error::eof)), action::done()});
}

TEST_CASE("abort ends the connection with its reason and detail")
{
    harness h;
    h.start();
    h.frames({adt("AB")});
    h.core->abort(errc::session_failed, "the observer threw: boom", h.now);
    CHECK(h.take() == std::vector{action::close(errc::session_failed), action::arm_timer(core_clock::time_point::max()),
                                  action::notify(ev(ekind::disconnected, "", errc::session_failed,
                                                    "the observer threw: boom"))});
    CHECK(h.reply_with(ack_of("AB")) == std::vector{action::done()});
}

TEST_CASE("a frame that outgrows the connection's allowance and the server's budget closes the connection")
{
    harness h(defaults(), 256 * 1024); // a budget of 256 KiB beyond 64 KiB per connection
    h.start();
    h.receive(start_block + std::string(100 * 1024, 'x'));
    CHECK(h.shared.budget.used() > 0);
    CHECK(h.shared.budget.used() == h.core->charged());
    const auto acts = h.receive(std::string(300 * 1024, 'x'));
    CHECK(acts == std::vector{action::notify(ev(ekind::limit_reached, "", errc::buffer_limit, at(acts, 0).event().detail)),
                              action::close(errc::buffer_limit), action::arm_timer(core_clock::time_point::max()),
                              action::notify(ev(ekind::disconnected, "", errc::buffer_limit)), action::done()});
    CHECK(h.shared.budget.used() == 0);
    CHECK(h.shared.stats.snapshot().limits[static_cast<std::size_t>(hl7::server_limit::max_buffered)] == 1);
}

TEST_CASE("connections share the budget, and a large frame's memory is given back once handled")
{
    auto config = defaults();
    config.max_segments = 0;
    config.max_fields = 0;
    // A frame gathered across reads is held twice while handled (the buffer, and the message
    // parsed from it), and the buffer grows geometrically: 4 MiB leave room for one such.
    harness a(config, 4 << 20);
    a.start();
    std::string big = adt("BIG") + "NTE|" + std::string(700 * 1024, 'x') + "\r";
    const std::string frame = hl7::mllp::encode(big);
    a.receive(frame.substr(0, 600 * 1024));
    const std::size_t taken_by_a = a.shared.budget.used();
    CHECK(taken_by_a > 500 * 1024);
    // Another session on the same budget cannot take what is left and more.
    hl7::detail::server_shared& shared = a.shared;
    session_core b(config, shared, peer, t0);
    action x;
    while (b.next(x)) {
    }
    std::string chunk = start_block + std::string(4 << 20, 'y');
    b.received(chunk, t0);
    bool closed = false;
    while (b.next(x))
        closed = closed || (x.what() == akind::close && x.reason() == errc::buffer_limit);
    CHECK(closed);
    CHECK(shared.budget.used() == taken_by_a);
    // The first one finishes its message; once answered, what it held goes back.
    a.receive(frame.substr(600 * 1024));
    a.reply_with(ack_of("BIG"));
    a.written();
    CHECK(a.core->held() <= hl7::detail::session_allowance);
    CHECK(shared.budget.used() == 0);
}

TEST_CASE("a flood of bad frames is reported ten times, then once a second with the number left out")
{
    auto config = defaults();
    config.max_bad_frames = 0;
    harness h(config);
    h.start();
    std::vector<std::string> empties(100, "");
    const auto acts = h.frames(empties);
    CHECK(acts.size() == 11); // ten reports, and the read
    CHECK(h.shared.stats.snapshot().errors == 100);
    h.now += 1s;
    CHECK(h.frames({""}) == std::vector{action::notify(ev(ekind::unparsable, "", errc::not_hl7, "", 90)), action::read()});
}

TEST_CASE("handler round trips land in the histogram bucket of their duration")
{
    harness h;
    h.start();
    h.frames({adt("H1")});
    h.now += 3ms;
    h.reply_with(ack_of("H1"));
    const auto c = h.shared.stats.snapshot();
    CHECK(c.handler_time.count == 1);
    CHECK(c.handler_time.sum == 3ms);
    CHECK(c.handler_time.buckets[3] == 1); // (2.5 ms, 5 ms]
}

TEST_CASE("without an observer no event is made")
{
    auto config = defaults();
    config.observed = false;
    harness h(config);
    CHECK(h.start() == std::vector{action::read(), action::arm_timer(t0 + 300s)});
    CHECK(h.frames({adt("Q")}) == std::vector{action::handle(parsed(adt("Q")))});
}

// Boost.MySQL style: a scripted exchange, with a failure injected at each step in turn. Every
// run must end with `done` exactly once, write nothing after its close, and give back its budget.
TEST_CASE("a failure injected at any step of an exchange ends the session cleanly")
{
    auto config = defaults();
    config.tls = true;
    config.handshake_timeout = 10s;
    struct step {
        const char* name;
        std::function<void(harness&, bool fail)> run;
    };
    const std::vector<step> script = {
        {"handshake", [](harness& h, bool fail) {
             if (fail)
                 h.core->handshake_failed(errc::tls_handshake_failed, h.now);
             else
                 h.core->handshake_done({}, h.now);
         }},
        {"read", [](harness& h, bool fail) {
             if (fail)
                 h.core->read_failed(asio::error::connection_reset, h.now);
             else {
                 h.chunk = hl7::mllp::encode(adt("M1")) + hl7::mllp::encode(adt("M2"));
                 h.core->received(h.chunk, h.now);
             }
         }},
        {"handler", [](harness& h, bool fail) {
             if (fail)
                 h.core->handler_threw("boom", h.now);
             else
                 h.core->handled(parsed(ack_of("M1")), h.now);
         }},
        {"write", [](harness& h, bool fail) { h.core->written(fail ? asio::error::broken_pipe : error_code{}, h.now); }},
        {"second handler", [](harness& h, bool) { h.core->handled(parsed(ack_of("M2")), h.now); }},
        {"second write", [](harness& h, bool fail) { h.core->written(fail ? asio::error::broken_pipe : error_code{}, h.now); }},
        {"stop", [](harness& h, bool) { h.core->stop(h.now); }},
    };
    for (std::size_t failing = 0; failing < script.size(); ++failing) {
        CAPTURE(script[failing].name);
        harness h(config, 1 << 20);
        h.start();
        std::size_t done = 0;
        bool closed = false;
        bool written_after_close = false;
        bool reading = false, writing = false, handshaking = true, handling = false;
        auto observe = [&](const std::vector<action>& acts) {
            for (const action& a : acts) {
                switch (a.what()) {
                case akind::done: ++done; break;
                case akind::close: closed = true; break;
                case akind::write:
                    written_after_close = written_after_close || closed;
                    CHECK_FALSE(writing); // at most one write outstanding
                    writing = true;
                    break;
                case akind::read: reading = true; break;
                case akind::handle:
                    CHECK_FALSE(handling); // at most one handler running
                    handling = true;
                    break;
                default: break;
                }
            }
        };
        for (std::size_t i = 0; i < script.size() && done == 0; ++i) {
            const bool fail = i == failing;
            // Only what is outstanding may complete; the rest of the script is skipped.
            const std::string_view name = script[i].name;
            const bool can = name == "handshake" ? handshaking
                             : name == "read"    ? reading
                             : name.find("handler") != std::string_view::npos ? handling
                             : name.find("write") != std::string_view::npos   ? writing
                                                                             : true;
            if (!can)
                continue;
            if (name == "handshake")
                handshaking = false;
            if (name == "read")
                reading = false;
            if (name.find("handler") != std::string_view::npos)
                handling = false;
            if (name.find("write") != std::string_view::npos)
                writing = false;
            script[i].run(h, fail);
            observe(h.take());
        }
        // Whatever is still outstanding completes as the closed socket makes it.
        if (!closed) {
            h.core->stop(h.now);
            observe(h.take());
            observe(h.advance_to(h.now + 10s));
        }
        if (reading) {
            h.core->read_failed(asio::error::operation_aborted, h.now);
            observe(h.take());
        }
        if (writing) {
            h.core->written(asio::error::operation_aborted, h.now);
            observe(h.take());
        }
        if (handling) {
            h.core->handled(errc::no_ack_requested, h.now);
            observe(h.take());
        }
        CHECK(closed);
        CHECK(done == 1);
        CHECK_FALSE(written_after_close);
        CHECK(h.shared.budget.used() == 0);
    }
}
