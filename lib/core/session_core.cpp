#include "core/session_core.hpp"

#include "model/mllp_scan.hpp"
#include "model/recover.hpp"

#include <hl7/model/ack.hpp>

#include <algorithm>
#include <utility>

namespace hl7::detail {

namespace {

using kind = server_event::kind;
constexpr auto relaxed = std::memory_order_relaxed;

// What a peer is told when its message could not be processed here; the details go to the
// observer.
constexpr std::string_view not_processed = "the message could not be processed; the receiver's log has the details";
constexpr std::string_view over_limits = "the message exceeds the receiver's limits";

clock::time_point after(clock::time_point t, clock::duration d) noexcept
{
    return d.count() > 0 ? t + d : clock::time_point::max();
}

bool equal_ignoring_case(std::string_view a, std::string_view b) noexcept
{
    return std::equal(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
        auto lower = [](char c) { return c >= 'A' && c <= 'Z' ? static_cast<char>(c - 'A' + 'a') : c; };
        return lower(x) == lower(y);
    });
}

// The header of a frame that is not parsed whole: its first segment when that parses (the
// frame's own delimiters), else what recover_header makes of it.
std::optional<message> header_of(std::string_view payload)
{
    auto first = message::parse(payload.substr(0, payload.find_first_of("\r\n")));
    if (first && !first.value().control_id().empty())
        return std::move(first).value();
    return recover_header(payload);
}

} // namespace

server_event owned_server_event::view() const noexcept
{
    return {what, peer, control_id, error, detail, suppressed};
}

bool rate_limited(server_event::kind k) noexcept
{
    switch (k) {
    case kind::accepted:
    case kind::received:
    case kind::replied:
    case kind::disconnected:
    case kind::accept_failed: return false;
    default: return true;
    }
}

session_config session_config::from(const server_options& o)
{
    session_config c;
    c.max_frame = o.max_frame;
    c.max_segments = o.max_segments;
    c.max_fields = o.max_fields;
    c.max_bad_frames = o.max_bad_frames;
    c.idle_timeout = o.idle_timeout;
    c.frame_timeout = o.frame_timeout;
    c.write_timeout = o.write_timeout;
    c.close_timeout = o.close_timeout;
    if (o.tls) {
        c.tls = true;
        c.handshake_timeout = o.tls->handshake_timeout;
        c.allowed_client_names = o.tls->allowed_client_names;
    }
    c.observed = static_cast<bool>(o.observer);
    return c;
}

// ---------------------------------------------------------------------------------------
// session_action

session_action session_action::handle(const hl7::message& m)
{
    session_action a(kind::handle);
    a.message_ = &m;
    return a;
}

session_action session_action::write(std::string_view bytes)
{
    session_action a(kind::write);
    a.bytes_ = bytes;
    return a;
}

session_action session_action::close(boost::system::error_code why)
{
    session_action a(kind::close);
    a.error_ = why;
    return a;
}

session_action session_action::notify(owned_server_event e)
{
    session_action a(kind::notify);
    a.event_ = std::move(e);
    return a;
}

session_action session_action::arm_timer(clock::time_point deadline)
{
    session_action a(kind::arm_timer);
    a.deadline_ = deadline;
    return a;
}

bool operator==(const session_action& a, const session_action& b)
{
    if (a.what_ != b.what_)
        return false;
    switch (a.what_) {
    case session_action::kind::handle: return a.message_->str() == b.message_->str();
    case session_action::kind::write: return a.bytes_ == b.bytes_;
    case session_action::kind::close: return a.error_ == b.error_;
    case session_action::kind::notify: return *a.event_ == *b.event_;
    case session_action::kind::arm_timer: return a.deadline_ == b.deadline_;
    default: return true;
    }
}

// ---------------------------------------------------------------------------------------
// session_core

session_core::session_core(const session_config& config, server_shared& shared, boost::asio::ip::tcp::endpoint peer,
                           time_point now)
    : config_(config), shared_(shared), peer_(std::move(peer)), phase_(phase::reading), decoder_(config.max_frame)
{
    notify({.what = kind::accepted, .peer = peer_}, now);
    if (config_.tls) {
        phase_ = phase::handshaking;
        phase_started_ = now;
        handshaking_ = true;
        actions_.push(action::handshake());
    } else {
        start_reading(now);
    }
    rearm();
}

session_core::~session_core()
{
    shared_.budget.give(charged_);
}

std::size_t session_core::held() const noexcept
{
    return decoder_.capacity() + (in_hand_ ? in_hand_->str().size() : 0) + (reply_ ? reply_->str().size() : 0);
}

clock::time_point session_core::due() const noexcept
{
    time_point t = stop_requested_ ? stop_deadline_ : time_point::max();
    switch (phase_) {
    case phase::handshaking: t = std::min(t, after(phase_started_, config_.handshake_timeout)); break;
    case phase::reading:
        t = std::min(t, frame_started_ ? after(*frame_started_, config_.frame_timeout)
                                       : after(phase_started_, config_.idle_timeout));
        break;
    case phase::writing: t = std::min(t, after(phase_started_, config_.write_timeout)); break;
    case phase::handling: break;
    case phase::closed: t = time_point::max(); break;
    }
    return t;
}

// --- inputs -------------------------------------------------------------------------------

void session_core::handshake_done(const std::vector<std::string>& names, time_point now)
{
    if (!completed(handshaking_, phase::handshaking))
        return;
    if (!config_.allowed_client_names.empty()) {
        for (const std::string& allowed : config_.allowed_client_names)
            for (const std::string& name : names)
                if (client_name_.empty() && equal_ignoring_case(name, allowed))
                    client_name_ = allowed;
        if (client_name_.empty()) {
            shared_.stats.hit(server_limit::allowed_client_names);
            std::string listed;
            for (const std::string& name : names)
                listed += (listed.empty() ? "" : ", ") + name;
            notify({.what = kind::refused,
                    .peer = peer_,
                    .error = errc::tls_client_not_allowed,
                    .detail = names.empty() ? "no names" : "certificate names: " + listed},
                   now);
            close(errc::tls_client_not_allowed, now);
            return;
        }
    }
    start_reading(now);
    rearm();
}

void session_core::handshake_failed(boost::system::error_code ec, time_point now)
{
    if (!completed(handshaking_, phase::handshaking))
        return;
    shared_.stats.errors.fetch_add(1, relaxed);
    notify({.what = kind::handshake_failed, .peer = peer_, .error = ec}, now);
    close(ec, now);
}

void session_core::received(std::string_view bytes, time_point now)
{
    if (!completed(reading_, phase::reading))
        return;
    shared_.stats.bytes_received.fetch_add(bytes.size(), relaxed);
    decoder_.feed(bytes);
    drain(now);
    rearm();
}

void session_core::read_failed(boost::system::error_code ec, time_point now)
{
    if (!completed(reading_, phase::reading))
        return;
    close(stop_requested_ ? make_error_code(errc::closed) : ec, now);
}

void session_core::handled(outcome::result<hl7::message> result, time_point now)
{
    if (!handler_returned(now))
        return;
    if (result) {
        const std::string_view text = result.value().str();
        if (mllp::detail::find_block_byte(text.data(), text.size()) != nullptr)
            handler_failed(errc::block_byte_in_message, make_error_code(errc::block_byte_in_message).message(), now);
        else
            reply(std::move(result).value(), std::string(in_hand_->control_id()), now);
    } else if (result.error() == errc::no_ack_requested) {
        message_done(now);
    } else {
        handler_failed(result.error(), result.error().message(), now);
    }
    rearm();
}

void session_core::handler_threw(std::string what, time_point now)
{
    if (!handler_returned(now))
        return;
    handler_failed(errc::handler_failed, std::move(what), now);
    rearm();
}

// An operation the core asked for completed: true when it was outstanding and the connection
// is still in the phase that asked for it; otherwise (the connection closed meanwhile, or
// nothing was asked) its completion only tells whether the session is over.
bool session_core::completed(bool& outstanding, phase asked_in)
{
    if (!std::exchange(outstanding, false))
        return false;
    if (phase_ == asked_in)
        return true;
    maybe_done();
    return false;
}

// The handler is done with the message in hand; false when the connection closed meanwhile.
bool session_core::handler_returned(time_point now)
{
    if (!handling_)
        return false;
    handling_ = false;
    shared_.stats.add_handler_time(now - handler_started_);
    if (phase_ == phase::handling)
        return true;
    in_hand_.reset();
    account(now);
    maybe_done();
    return false;
}

void session_core::written(boost::system::error_code ec, time_point now)
{
    if (!writing_)
        return;
    writing_ = false;
    if (phase_ != phase::writing) {
        reply_.reset();
        account(now);
        maybe_done();
        return;
    }
    if (ec) {
        reply_.reset();
        close(ec, now);
        return;
    }
    auto& stats = shared_.stats;
    stats.replied.fetch_add(1, relaxed);
    stats.bytes_sent.fetch_add(reply_->str().size() + mllp::overhead, relaxed);
    static const path msa1_path = path::parse("MSA.1").value();
    const auto msa1 = reply_->get(msa1_path);
    if (const auto code = msa1 ? parse_ack_code(msa1.value().raw()) : std::nullopt)
        stats.replies_by_code[static_cast<std::size_t>(*code)].fetch_add(1, relaxed);
    if (config_.observed)
        notify({.what = kind::replied, .peer = peer_, .control_id = answering_}, now);
    reply_.reset();
    message_done(now);
    rearm();
}

void session_core::timer_fired(time_point now)
{
    armed_ = time_point::max();
    if (phase_ == phase::closed)
        return;
    if (now >= stop_deadline_) {
        close(errc::closed, now);
        return;
    }
    if (now >= due()) {
        switch (phase_) {
        case phase::handshaking:
            shared_.stats.hit(server_limit::handshake_timeout);
            shared_.stats.errors.fetch_add(1, relaxed);
            notify({.what = kind::handshake_failed, .peer = peer_, .error = errc::tls_handshake_timeout}, now);
            close(errc::tls_handshake_timeout, now);
            return;
        case phase::reading: {
            const bool in_frame = frame_started_.has_value();
            const auto ec = make_error_code(in_frame ? errc::frame_timeout : errc::idle_timeout);
            shared_.stats.hit(in_frame ? server_limit::frame_timeout : server_limit::idle_timeout);
            notify({.what = kind::timed_out, .peer = peer_, .error = ec}, now);
            close(ec, now);
            return;
        }
        case phase::writing:
            shared_.stats.hit(server_limit::write_timeout);
            notify({.what = kind::timed_out, .peer = peer_, .control_id = answering_, .error = errc::write_timeout}, now);
            close(errc::write_timeout, now);
            return;
        default: break;
        }
    }
    rearm();
}

void session_core::stop(time_point now)
{
    if (stop_requested_ || phase_ == phase::closed)
        return;
    stop_requested_ = true;
    // Waiting for a message (a frame half read included) or for the handshake: nothing is in
    // hand, so the connection goes at once.
    if (phase_ == phase::reading || phase_ == phase::handshaking) {
        close(errc::closed, now);
        return;
    }
    stop_deadline_ = after(now, config_.close_timeout);
    rearm();
}

void session_core::abort(boost::system::error_code why, std::string detail, time_point now)
{
    shared_.stats.errors.fetch_add(1, relaxed);
    close(why, now, std::move(detail));
}

// --- the message flow ----------------------------------------------------------------------

void session_core::start_reading(time_point now)
{
    phase_ = phase::reading;
    phase_started_ = now;
    reading_ = true;
    actions_.push(action::read());
}

// Hands out the frames of the bytes read, one at a time: a message stops the loop until its
// reply is written, and the next read is asked for only once every frame of the bytes is
// handled, so that the bytes stay where they are meanwhile.
void session_core::drain(time_point now)
{
    while (phase_ == phase::reading) {
        auto frame = decoder_.next();
        if (!frame) {
            if (!account(now))
                return;
            if (!decoder_.in_frame())
                frame_started_.reset();
            else if (!frame_started_)
                frame_started_ = now;
            reading_ = true;
            actions_.push(action::read());
            return;
        }
        frame_started_.reset(); // a frame ended, well or not: the next one's clock starts when it is seen
        if (*frame) {
            on_frame(frame->value(), now);
            continue;
        }
        shared_.stats.errors.fetch_add(1, relaxed);
        shared_.stats.bad_frames.fetch_add(1, relaxed);
        notify({.what = kind::bad_frame, .peer = peer_, .error = frame->error()}, now);
        bad(now);
    }
}

void session_core::on_frame(std::string_view payload, time_point now)
{
    auto& stats = shared_.stats;
    stats.received.fetch_add(1, relaxed);
    if (too_complex(payload, now))
        return;
    auto parsed = message::parse(payload);
    if (!parsed) {
        stats.errors.fetch_add(1, relaxed);
        auto header = recover_header(payload);
        std::string control_id(header ? header->control_id() : std::string_view{});
        notify({.what = kind::unparsable, .peer = peer_, .control_id = control_id, .error = parsed.error()}, now);
        if (bad(now) || !header)
            return;
        // 100: the header segment, required first, could not be read.
        const std::string text = parsed.error().message();
        auto ae = make_ack(*header, verdict::error, {.text = text, .error_code = 100});
        if (ae)
            reply(std::move(ae).value(), std::move(control_id), now);
        return;
    }
    phase_started_ = now; // a message: the idle wait starts again
    static const path message_type = path::parse("MSH.9.1").value();
    if (parsed.value().get(message_type) == "ACK") {
        stats.acks_ignored.fetch_add(1, relaxed);
        notify({.what = kind::ack_ignored, .peer = peer_, .control_id = std::string(parsed.value().control_id())}, now);
        return;
    }
    bad_streak_ = 0;
    if (config_.observed)
        notify({.what = kind::received, .peer = peer_, .control_id = std::string(parsed.value().control_id())}, now);
    in_hand_ = std::move(parsed).value();
    phase_ = phase::handling;
    if (!account(now))
        return;
    handling_ = true;
    handler_started_ = now;
    actions_.push(action::handle(*in_hand_));
}

// Counting line ends and field separators costs one pass over the bytes; parsing a frame of
// millions of tiny segments would cost many times its size in memory and time.
bool session_core::too_complex(std::string_view payload, time_point now)
{
    // A segment takes two bytes at least (an empty line makes none), a field separator one:
    // a frame too short to pass either bound needs no scan, which spares nearly every one.
    const bool segments_fit = config_.max_segments == 0 || payload.size() / 2 + 1 <= config_.max_segments;
    const bool fields_fit = config_.max_fields == 0 || payload.size() <= config_.max_fields;
    if ((segments_fit && fields_fit) || payload.size() < 4)
        return false;
    const char separator = payload[3]; // MSH|, FHS|, BHS|: anything else does not parse anyway
    std::size_t cr = 0, lf = 0, fields = 0;
    for (const char c : payload) {
        cr += c == '\r';
        lf += c == '\n';
        fields += c == separator;
    }
    // CR, LF or CRLF end a segment; a mix is undercounted by at most half, which a bound on
    // cost can afford.
    const std::size_t segments = std::max(cr, lf) + 1;
    const bool too_many_segments = config_.max_segments != 0 && segments > config_.max_segments;
    if (!too_many_segments && (config_.max_fields == 0 || fields <= config_.max_fields))
        return false;
    auto& stats = shared_.stats;
    stats.errors.fetch_add(1, relaxed);
    stats.hit(too_many_segments ? server_limit::max_segments : server_limit::max_fields);
    auto header = header_of(payload);
    std::string control_id(header ? header->control_id() : std::string_view{});
    notify({.what = kind::limit_reached,
            .peer = peer_,
            .control_id = control_id,
            .error = errc::message_too_complex,
            .detail = too_many_segments ? std::to_string(segments) + " segments"
                                        : std::to_string(fields) + " field separators"},
           now);
    if (bad(now) || !header)
        return true;
    auto ar = make_ack(*header, verdict::reject, {.text = over_limits, .error_code = 207});
    if (ar)
        reply(std::move(ar).value(), std::move(control_id), now);
    return true;
}

// One more bad frame in a row; true when that closed the connection.
bool session_core::bad(time_point now)
{
    if (config_.max_bad_frames == 0 || ++bad_streak_ < config_.max_bad_frames)
        return false;
    shared_.stats.hit(server_limit::max_bad_frames);
    notify({.what = kind::limit_reached, .peer = peer_, .error = errc::too_many_bad_frames}, now);
    close(errc::too_many_bad_frames, now);
    return true;
}

void session_core::reply(hl7::message m, std::string control_id, time_point now)
{
    reply_ = std::move(m);
    answering_ = std::move(control_id);
    phase_ = phase::writing;
    phase_started_ = now;
    if (!account(now))
        return;
    writing_ = true;
    actions_.push(action::write(reply_->str()));
}

void session_core::handler_failed(boost::system::error_code ec, std::string detail, time_point now)
{
    shared_.stats.errors.fetch_add(1, relaxed);
    std::string control_id(in_hand_->control_id());
    notify({.what = kind::handler_error, .peer = peer_, .control_id = control_id, .error = ec, .detail = std::move(detail)},
           now);
    auto ae = make_ack(*in_hand_, verdict::error, {.error_code = 207, .error_text = not_processed});
    if (ae)
        reply(std::move(ae).value(), std::move(control_id), now);
    else
        message_done(now);
}

// The message in hand is answered, or deliberately not: on to the next one.
void session_core::message_done(time_point now)
{
    in_hand_.reset();
    if (stop_requested_) {
        close(errc::closed, now);
        return;
    }
    phase_ = phase::reading;
    phase_started_ = now;
    drain(now);
}

void session_core::close(boost::system::error_code why, time_point now, std::string detail)
{
    if (phase_ == phase::closed)
        return;
    phase_ = phase::closed;
    actions_.push(action::close(why));
    {
        // Its buffer goes now (a move-assignment could keep the old capacity); what is in
        // hand goes when done with.
        mllp::decoder fresh(config_.max_frame);
        std::swap(decoder_, fresh);
    }
    account(now);
    if (armed_ != time_point::max()) {
        armed_ = time_point::max();
        actions_.push(action::arm_timer(time_point::max()));
    }
    notify({.what = kind::disconnected, .peer = peer_, .error = why, .detail = std::move(detail)}, now);
    maybe_done();
}

void session_core::maybe_done()
{
    if (phase_ != phase::closed || done_ || reading_ || writing_ || handshaking_ || handling_)
        return;
    done_ = true;
    actions_.push(action::done());
}

// Brings the budget in line with what is held; false when it is spent, which closes the
// connection.
bool session_core::account(time_point now)
{
    const std::size_t h = held();
    const std::size_t charge = h > session_allowance ? h - session_allowance : 0;
    if (charge <= charged_) {
        shared_.budget.give(charged_ - charge);
        charged_ = charge;
        return true;
    }
    if (shared_.budget.take(charge - charged_)) {
        charged_ = charge;
        return true;
    }
    shared_.stats.hit(server_limit::max_buffered);
    notify({.what = kind::limit_reached, .peer = peer_, .control_id = answering_, .error = errc::buffer_limit,
            .detail = std::to_string(h) + " bytes held"},
           now);
    in_hand_.reset(); // never handed out: the connection goes before its handler runs
    reply_.reset();   // never written
    close(errc::buffer_limit, now);
    return false;
}

void session_core::notify(owned_server_event e, time_point now)
{
    if (!config_.observed)
        return;
    if (rate_limited(e.what)) {
        const auto left_out = shared_.limiter.admit(e.what, now);
        if (!left_out)
            return;
        e.suppressed = *left_out;
    }
    actions_.push(action::notify(std::move(e)));
}

// The timer is armed lazily, as the client's is: only when something is due before it.
void session_core::rearm()
{
    const time_point t = due();
    if (t < armed_) {
        armed_ = t;
        actions_.push(action::arm_timer(t));
    }
}

} // namespace hl7::detail
