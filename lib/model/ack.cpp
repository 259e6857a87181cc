#include <hl7/model/ack.hpp>

#include <boost/outcome/try.hpp>

#include "model/recover.hpp"
#include "model/text.hpp"

namespace hl7 {
namespace {

std::string_view table_0357_text(std::uint16_t code) noexcept
{
    switch (code) {
    case 0: return "Message accepted";
    case 100: return "Segment sequence error";
    case 101: return "Required field missing";
    case 102: return "Data type error";
    case 103: return "Table value not found";
    case 104: return "Value too long";
    case 200: return "Unsupported message type";
    case 201: return "Unsupported event code";
    case 202: return "Unsupported processing id";
    case 203: return "Unsupported version id";
    case 204: return "Unknown key identifier";
    case 205: return "Duplicate key identifier";
    case 206: return "Application record locked";
    case 207: return "Application internal error";
    default: return {};
    }
}

// What make_ack copies from the received header, read with message::get through paths
// parsed once: a server builds an ACK for every message it answers.
struct header_fields {
    std::string_view fields[17]; // fields[n]: MSH-n as on the wire, for n from 3 (empty when absent)
    std::string_view type;       // MSH-9.1
    std::string_view trigger;    // MSH-9.2
    bool present = false;        // the message has an MSH segment

    explicit header_fields(const message& m)
    {
        static const struct paths {
            path msh = path::parse("MSH").value();
            path type = path::parse("MSH.9.1").value();
            path trigger = path::parse("MSH.9.2").value();
        } p;
        const auto segment = m.get(p.msh);
        present = segment && segment.value().present();
        if (!present)
            return;
        type = m.get(p.type).value().raw();
        trigger = m.get(p.trigger).value().raw();
        path field = p.msh;
        for (const std::uint32_t n : {3, 4, 5, 6, 10, 11, 12, 15, 16}) {
            field.field = n;
            fields[n] = m.get(field).value().raw();
        }
    }
};

// Whether an acknowledgement condition (HL7 table 0155) asks for an acknowledgement of
// verdict `v`. Read only in enhanced mode, where an empty field asks for nothing.
bool asks(std::string_view condition, verdict v) noexcept
{
    if (condition.empty() || condition == "NE")
        return false;
    if (condition == "ER")
        return v != verdict::accept;
    if (condition == "SU")
        return v == verdict::accept;
    return true; // AL, or a value nobody defined: better an answer than a sender left waiting
}

// The six codes in enum order: the one place their spelling lives.
constexpr std::string_view code_names[] = {"AA", "AE", "AR", "CA", "CE", "CR"};

std::optional<ack_code> code_for(const header_fields& h, verdict v) noexcept
{
    if (!h.present || h.type == "ACK")
        return std::nullopt;
    const auto offset = static_cast<int>(v);
    const std::string_view accept_type = h.fields[15], application_type = h.fields[16];
    if (accept_type.empty() && application_type.empty())
        return static_cast<ack_code>(offset); // original mode: AA, AE, AR
    if (asks(accept_type, v))
        return static_cast<ack_code>(3 + offset); // CA, CE, CR
    if (asks(application_type, v))
        return static_cast<ack_code>(offset);
    return std::nullopt;
}

} // namespace

std::string_view to_string(ack_code code) noexcept
{
    return code_names[static_cast<int>(code)];
}

std::optional<ack_code> parse_ack_code(std::string_view text) noexcept
{
    for (int i = 0; i < 6; ++i)
        if (code_names[i] == text)
            return static_cast<ack_code>(i);
    return std::nullopt;
}

std::string_view to_string(verdict v) noexcept
{
    switch (v) {
    case verdict::accept: return "accept";
    case verdict::error: return "error";
    case verdict::reject: return "reject";
    }
    return "unknown";
}

verdict verdict_of(ack_code code) noexcept
{
    return static_cast<verdict>(static_cast<int>(code) % 3);
}

std::optional<ack_code> ack_code_for(const message& received, verdict v)
{
    return code_for(header_fields(received), v);
}

outcome::result<message> make_ack(const message& received, verdict v, const ack_options& options)
{
    const header_fields h(received);
    if (!h.present)
        return errc::not_hl7;
    const std::optional<ack_code> code = code_for(h, v);
    if (!code)
        return errc::no_ack_requested;
    const hl7::delimiters& d = received.delimiters();
    const std::string_view msa1 = to_string(*code);

    // The swapped sender/receiver fields are copied raw: they may carry components (HD) in
    // the received message's own delimiters, which the ACK shares.
    std::string s;
    s.reserve(256);
    s += {'M', 'S', 'H', d.field, d.component, d.repetition, d.escape, d.subcomponent};
    if (d.truncation)
        s += d.truncation;
    for (const std::size_t n : {5, 6, 3, 4}) {
        s += d.field;
        s += h.fields[n];
    }
    s += d.field;
    detail::append_escaped(s, make_timestamp(), d); // MSH-7
    s += d.field;                                   // MSH-8
    s += d.field;
    s += "ACK";
    s += d.component;
    s += h.trigger;
    s += d.component;
    s += "ACK";
    s += d.field;
    s += make_control_id(); // MSH-10 (letters and digits only)
    s += d.field;
    s += h.fields[11];
    s += d.field;
    s += h.fields[12];
    s += "\rMSA";
    s += d.field;
    s += msa1;
    s += d.field;
    s += h.fields[10];
    if (!options.text.empty()) {
        s += d.field;
        detail::append_escaped(s, options.text, d);
    }
    if (v != verdict::accept && (options.error_code != 0 || !options.error_text.empty())) {
        // ERR-3 = <code>^<text>^HL70357, ERR-4 = E, ERR-8 = the user message.
        const std::uint16_t err = options.error_code ? options.error_code : 207;
        s += "\rERR";
        s.append(3, d.field);
        s += std::to_string(err);
        s += d.component;
        detail::append_escaped(s, table_0357_text(err), d);
        s += d.component;
        s += "HL70357";
        s += d.field;
        s += 'E';
        if (!options.error_text.empty()) {
            s.append(4, d.field);
            detail::append_escaped(s, options.error_text, d);
        }
    }
    s += '\r';
    // Built in one piece: a set() per field would re-index the ACK each time.
    BOOST_OUTCOME_TRY(auto ack, message::parse(std::move(s)));
    return ack;
}

outcome::result<ack> ack::read(hl7::message m, std::chrono::microseconds round_trip)
{
    static const struct paths {
        path msa1 = path::parse("MSA.1").value();
        path msa2 = path::parse("MSA.2").value();
    } p;
    const auto code = parse_ack_code(m.get(p.msa1).value().raw());
    if (!code || m.get(p.msa2).value().raw().empty())
        return errc::invalid_ack;
    ack a;
    a.message_ = std::move(m);
    a.code_ = *code;
    a.valid_ = true;
    a.round_trip_ = round_trip;
    return a;
}

std::string_view ack::control_id() const noexcept
{
    static const path msa2 = path::parse("MSA.2").value();
    const auto v = message_.get(msa2);
    return v ? v.value().raw() : std::string_view{};
}

std::string ack::text() const
{
    static const path msa3 = path::parse("MSA.3").value();
    return message_.get(msa3).value().decoded();
}

std::vector<ack_error> ack::errors() const
{
    static const struct paths {
        path err = path::parse("ERR").value();
        path location = path::parse("ERR.2").value();
        path code = path::parse("ERR.3.1").value();
        path code_text = path::parse("ERR.3.2").value();
        path severity = path::parse("ERR.4").value();
        path user_message = path::parse("ERR.8").value();
    } p;
    std::vector<ack_error> out;
    const std::size_t n = message_.count(p.err).value();
    for (std::uint32_t i = 1; i <= n; ++i) {
        auto read = [&](path q) {
            q.occurrence = i;
            return message_.get(q).value().decoded();
        };
        path location = p.location;
        location.occurrence = i;
        out.push_back({read(p.code), read(p.code_text), read(p.severity),
                       std::string(message_.get(location).value().raw()), read(p.user_message)});
    }
    return out;
}

std::string ack::explanation() const
{
    std::string out = text();
    for (const ack_error& e : errors()) {
        const std::string& t = e.user_message.empty() ? e.code_text : e.user_message;
        if (t.empty())
            continue;
        if (!out.empty())
            out += "; ";
        out += t;
    }
    return out;
}

boost::system::error_code ack::error() const noexcept
{
    if (!valid_)
        return errc::invalid_ack;
    switch (verdict()) {
    case verdict::accept: return {};
    case verdict::error: return ack_errc::application_error;
    case verdict::reject: return ack_errc::application_reject;
    }
    return errc::invalid_ack;
}

std::optional<message> detail::recover_header(std::string_view frame)
{
    if (frame.size() < 4 || !frame.starts_with("MSH"))
        return std::nullopt;
    const char separator = frame[3];
    const std::string_view segment = frame.substr(0, frame.find_first_of("\r\n"));
    const std::size_t after_msh2 = segment.find(separator, 4);
    std::string text{'M', 'S', 'H', separator, '^', '~', '\\', '&'};
    if (after_msh2 != std::string_view::npos)
        text += segment.substr(after_msh2);
    auto m = message::parse(std::move(text));
    if (!m || m.value().control_id().empty())
        return std::nullopt;
    return std::move(m).value();
}

} // namespace hl7
