using Microsoft.Win32.SafeHandles;
using Vism.Abstractions;
using Vism.VhostUser;

namespace Vism.Transport.VhostUser;

/// <summary>A request as a handler sees it. Handlers remove from <see cref="Fds"/> the fds they keep.</summary>
internal readonly ref struct Request(MessageHeader header, string name, ReadOnlySpan<byte> payload, List<SafeFileHandle> fds)
{
    public MessageHeader Header { get; } = header;

    /// <summary>The request's spec name (its row in <see cref="RequestTable"/>).</summary>
    public string Name { get; } = name;
    public ReadOnlySpan<byte> Payload { get; } = payload;
    public List<SafeFileHandle> Fds { get; } = fds;

    /// <summary>Refuses this request: <see cref="RequestTable.Refusal"/> with <paramref name="detail"/>.</summary>
    public Outcome Refuse(string detail) => new(RequestTable.Refusal(Name, detail), null);

    /// <summary>Success when <paramref name="detail"/> is null, otherwise <see cref="Refuse"/>.</summary>
    public Outcome RefuseIf(string? detail) => detail is null ? Outcome.Ok : Refuse(detail);

    /// <summary>Refuses a payload that does not decode as <paramref name="what"/>.</summary>
    public Outcome Malformed(string what) => Refuse($"malformed {what} payload");

    /// <summary>Takes ownership of the first fd.</summary>
    public SafeFileHandle TakeFd()
    {
        SafeFileHandle fd = Fds[0];
        Fds.RemoveAt(0);
        return fd;
    }
}

/// <summary>What a handler produced: a refusal (<see cref="Request.Refuse"/>; the session counts,
/// logs and answers it), or success with the reply payload of a request that has one.</summary>
internal readonly record struct Outcome(Refusal? Refused, byte[]? Reply)
{
    public static Outcome Ok => default;
    public static Outcome Value(byte[] reply) => new(null, reply);
    public static Outcome U64(ulong value) => new(null, U64Payload.ToBytes(value));
}

internal delegate Outcome RequestHandler(VhostUserSession session, in Request request);

/// <summary>
/// One row of the request table: what a request may carry and how it is answered.
/// <see cref="HasReply"/> requests always get a reply with their own payload (a zero-length payload
/// on failure, which QEMU reports as an error). The others get a u64 ack (0 = success) exactly when
/// the frontend set NEED_REPLY and negotiated REPLY_ACK.
/// </summary>
/// <param name="Request">The request.</param>
/// <param name="Name">Its spec name.</param>
/// <param name="MinPayload">Fewest payload bytes.</param>
/// <param name="MaxPayload">Most payload bytes.</param>
/// <param name="MinFds">Fewest fds.</param>
/// <param name="MaxFds">Most fds; any fd on a request that takes none is closed and reported.</param>
/// <param name="ProtocolBit">Protocol feature the frontend must have acked, or -1.</param>
/// <param name="HasReply">Whether the request always gets a typed reply.</param>
/// <param name="Handler">What it does.</param>
internal sealed record RequestSpec(FrontendRequest Request, string Name, int MinPayload, int MaxPayload, int MinFds, int MaxFds,
    int ProtocolBit, bool HasReply, RequestHandler Handler);

/// <summary>The only place that says which requests vism serves.</summary>
internal static class RequestTable
{
    /// <summary>Largest payload read from the socket; larger ones break the framing (the connection
    /// closes). Unknown requests up to this size are skipped and answered with an error.</summary>
    public const int MaxPayload = 4096;

    private const int None = -1;

    /// <summary>A refused <paramref name="request"/>: counted as <c>vhost-user.refused.REQUEST</c>.</summary>
    /// <param name="request">The request's spec name (UNKNOWN for one vism does not serve).</param>
    /// <param name="detail">Why, for the log.</param>
    public static Refusal Refusal(string request, string detail) => new($"vhost-user.refused.{request}", detail);
    private const int U64 = U64Payload.Size;
    private const int State = VringState.Size;
    private const int Region = MemoryRegionDescriptor.SingleRegionPayloadSize;
    private const int TableMax = 8 + VhostUserConstants.MaxMemTableRegions * MemoryRegionDescriptor.EncodedSize;
    private const int ConfigMax = ConfigHeader.Size + VhostUserConstants.MaxConfigSize;

    private static readonly RequestSpec[] Specs =
    [
        new(FrontendRequest.GetFeatures, "GET_FEATURES", 0, 0, 0, 0, None, true, static (s, in r) => s.GetFeatures()),
        new(FrontendRequest.SetFeatures, "SET_FEATURES", U64, U64, 0, 0, None, false, static (s, in r) => s.SetFeatures(r)),
        new(FrontendRequest.SetOwner, "SET_OWNER", 0, 0, 0, 0, None, false, static (s, in r) => s.SetOwner()),
        new(FrontendRequest.ResetOwner, "RESET_OWNER", 0, 0, 0, 0, None, false, static (s, in r) => s.ResetDevice("RESET_OWNER")),
        new(FrontendRequest.SetMemTable, "SET_MEM_TABLE", 8, TableMax, 0, VhostUserConstants.MaxMemTableRegions, None, false, static (s, in r) => s.SetMemTable(r)),
        new(FrontendRequest.SetVringNum, "SET_VRING_NUM", State, State, 0, 0, None, false, static (s, in r) => s.SetVringNum(r)),
        new(FrontendRequest.SetVringAddr, "SET_VRING_ADDR", VringAddress.Size, VringAddress.Size, 0, 0, None, false, static (s, in r) => s.SetVringAddr(r)),
        new(FrontendRequest.SetVringBase, "SET_VRING_BASE", State, State, 0, 0, None, false, static (s, in r) => s.SetVringBase(r)),
        new(FrontendRequest.GetVringBase, "GET_VRING_BASE", State, State, 0, 0, None, true, static (s, in r) => s.GetVringBase(r)),
        new(FrontendRequest.SetVringKick, "SET_VRING_KICK", U64, U64, 0, 1, None, false, static (s, in r) => s.SetVringKick(r)),
        new(FrontendRequest.SetVringCall, "SET_VRING_CALL", U64, U64, 0, 1, None, false, static (s, in r) => s.SetVringCall(r)),
        new(FrontendRequest.SetVringErr, "SET_VRING_ERR", U64, U64, 0, 1, None, false, static (s, in r) => s.SetVringErr(r)),
        new(FrontendRequest.GetProtocolFeatures, "GET_PROTOCOL_FEATURES", 0, 0, 0, 0, None, true, static (s, in r) => s.GetProtocolFeatures()),
        new(FrontendRequest.SetProtocolFeatures, "SET_PROTOCOL_FEATURES", U64, U64, 0, 0, None, false, static (s, in r) => s.SetProtocolFeatures(r)),
        new(FrontendRequest.GetQueueNum, "GET_QUEUE_NUM", 0, 0, 0, 0, ProtocolFeature.Mq, true, static (s, in r) => s.GetQueueNum()),
        new(FrontendRequest.SetVringEnable, "SET_VRING_ENABLE", State, State, 0, 0, None, false, static (s, in r) => s.SetVringEnable(r)),
        new(FrontendRequest.SetBackendReqFd, "SET_BACKEND_REQ_FD", 0, 0, 1, 1, ProtocolFeature.BackendReq, false, static (s, in r) => s.SetBackendReqFd(r)),
        new(FrontendRequest.GetConfig, "GET_CONFIG", ConfigHeader.Size, ConfigMax, 0, 0, ProtocolFeature.Config, true, static (s, in r) => s.GetConfig(r)),
        new(FrontendRequest.SetConfig, "SET_CONFIG", ConfigHeader.Size, ConfigMax, 0, 0, ProtocolFeature.Config, false, static (s, in r) => s.SetConfig(r)),
        new(FrontendRequest.ResetDevice, "RESET_DEVICE", 0, 0, 0, 0, ProtocolFeature.ResetDevice, false, static (s, in r) => s.ResetDevice("RESET_DEVICE")),
        new(FrontendRequest.GetMaxMemSlots, "GET_MAX_MEM_SLOTS", 0, 0, 0, 0, ProtocolFeature.ConfigureMemSlots, true, static (s, in r) => s.GetMaxMemSlots()),
        new(FrontendRequest.AddMemReg, "ADD_MEM_REG", Region, Region, 1, 1, ProtocolFeature.ConfigureMemSlots, false, static (s, in r) => s.AddMemReg(r)),
        new(FrontendRequest.RemMemReg, "REM_MEM_REG", Region, Region, 0, 1, ProtocolFeature.ConfigureMemSlots, false, static (s, in r) => s.RemMemReg(r)),
        new(FrontendRequest.SetStatus, "SET_STATUS", U64, U64, 0, 0, ProtocolFeature.Status, false, static (s, in r) => s.SetStatus(r)),
        new(FrontendRequest.GetStatus, "GET_STATUS", 0, 0, 0, 0, ProtocolFeature.Status, true, static (s, in r) => s.GetStatus()),
        new(FrontendRequest.GetShmemConfig, "GET_SHMEM_CONFIG", 0, 0, 0, 0, ProtocolFeature.Shmem, true, static (s, in r) => s.GetShmemConfig()),
    ];

    private static readonly Dictionary<uint, RequestSpec> ByCode = Specs.ToDictionary(s => (uint)s.Request);

    /// <summary>Protocol features vism offers (and acts on once acked).</summary>
    public static readonly ulong OfferedProtocolFeatures = Bits(ProtocolFeature.Mq, ProtocolFeature.ReplyAck, ProtocolFeature.BackendReq,
        ProtocolFeature.Config, ProtocolFeature.BackendSendFd, ProtocolFeature.ResetDevice, ProtocolFeature.ConfigureMemSlots,
        ProtocolFeature.Status, ProtocolFeature.Shmem);

    public static IReadOnlyList<RequestSpec> All => Specs;

    public static RequestSpec? Find(uint request) => ByCode.GetValueOrDefault(request);

    /// <summary>Why a request outside the table is refused.</summary>
    public static string DescribeUnsupported(uint request) =>
        Enum.IsDefined(typeof(FrontendRequest), request) && request != 0
            ? $"{(FrontendRequest)request} ({request}) is not supported by vism (the protocol feature it needs is not offered)"
            : $"unknown request {request}";

    public static string ProtocolFeatureName(int bit) => bit switch
    {
        ProtocolFeature.Mq => "MQ",
        ProtocolFeature.ReplyAck => "REPLY_ACK",
        ProtocolFeature.BackendReq => "BACKEND_REQ",
        ProtocolFeature.Config => "CONFIG",
        ProtocolFeature.BackendSendFd => "BACKEND_SEND_FD",
        ProtocolFeature.ResetDevice => "RESET_DEVICE",
        ProtocolFeature.ConfigureMemSlots => "CONFIGURE_MEM_SLOTS",
        ProtocolFeature.Status => "STATUS",
        ProtocolFeature.Shmem => "SHMEM",
        _ => $"bit {bit}",
    };

    private static ulong Bits(params ReadOnlySpan<int> bits)
    {
        ulong m = 0;
        foreach (int b in bits) m |= 1UL << b;
        return m;
    }
}
