using System.ComponentModel;
using System.Text;
using Vism.Abstractions;

namespace Vism.Transport.VhostUser;

/// <summary>Options of the <c>vhost-user</c> transport (the <c>[device.transport]</c> section).</summary>
public sealed class VhostUserOptions : IValidatableOptions
{
    /// <summary>Longest socket path a sockaddr_un holds (108 bytes with the terminating NUL).</summary>
    public const int MaxSocketPathBytes = 107;

    /// <summary>Most per-region vectors (vhost-user queue indices are 8 bits wide).</summary>
    public const int MaxVectors = 128;

    /// <summary>Unix socket the device listens on. Empty: <c>&lt;socket-directory&gt;/&lt;device name&gt;.sock</c>.</summary>
    [Description("Unix socket the device listens on; empty means <socket-directory>/<device name>.sock")]
    public string SocketPath { get; set; } = "";

    /// <summary>Per-region interrupt vectors (VIRTIO_ISM_F_EVENT_IRQ), exposed as the call fds of
    /// extra queues after the device's own; QEMU's <c>num_vqs</c> must count them.</summary>
    [Description("Per-region interrupt vectors, exposed as extra queues after the device's own (QEMU num_vqs = device queues + vectors); 0 = none")]
    public int Vectors { get; set; }

    /// <summary>Memory slots offered to the frontend (GET_MAX_MEM_SLOTS).</summary>
    [Description("Memory regions the frontend may add with ADD_MEM_REG (GET_MAX_MEM_SLOTS)")]
    public int MaxMemSlots { get; set; } = 509;

    /// <summary>NOTIFY-window poll interval right after a slot write, a kick or a new mapping (ms).</summary>
    [Description("NOTIFY window poll interval while slots are being written, in ms (latency bound when active)")]
    public int NotifyPollFastMs { get; set; } = 1;

    /// <summary>Longest NOTIFY-window poll interval when no slot is written (ms); the interval doubles
    /// after each empty scan up to this value. Polling stops while no region slot is in use.</summary>
    [Description("Longest NOTIFY window poll interval when idle, in ms (latency bound after an idle period); the interval doubles per empty scan")]
    public int NotifyPollSlowMs { get; set; } = 50;

    /// <summary>How long a backend-channel request (SHMEM_MAP/UNMAP) may wait for its reply before the
    /// frontend is considered broken and disconnected (ms).</summary>
    [Description("How long SHMEM_MAP/UNMAP may wait for the frontend's reply before the connection is dropped, in ms")]
    public int BackendReplyTimeoutMs { get; set; } = 10_000;

    /// <summary>The socket path this device serves, made absolute.</summary>
    /// <param name="device">The device.</param>
    /// <param name="host">The host (for its socket directory).</param>
    public string ResolveSocketPath(DeviceDescription device, HostDescription host) =>
        Path.GetFullPath(string.IsNullOrWhiteSpace(SocketPath)
            ? Path.Combine(host.SocketDirectory, device.Name + ".sock")
            : SocketPath);

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context)
    {
        string path = ResolveSocketPath(context.Device, context.Host);
        if (Encoding.UTF8.GetByteCount(path) > MaxSocketPathBytes)
            context.Error("socket-path", $"'{path}' is {Encoding.UTF8.GetByteCount(path)} bytes; a Unix socket path holds at most {MaxSocketPathBytes}");
        else
            context.ClaimEndpoint("socket-path", path);
        if (Vectors is < 0 or > MaxVectors)
            context.Error("vectors", $"{Vectors} is outside 0..{MaxVectors}");
        if (MaxMemSlots is < 1 or > 509)
            context.Error("max-mem-slots", $"{MaxMemSlots} is outside 1..509 (KVM's limit)");
        if (NotifyPollFastMs is < 1 or > 1000)
            context.Error("notify-poll-fast-ms", $"{NotifyPollFastMs} is outside 1..1000");
        if (NotifyPollSlowMs < NotifyPollFastMs || NotifyPollSlowMs > 10_000)
            context.Error("notify-poll-slow-ms", $"{NotifyPollSlowMs} must lie between notify-poll-fast-ms ({NotifyPollFastMs}) and 10000");
        if (BackendReplyTimeoutMs is < 100 or > 600_000)
            context.Error("backend-reply-timeout-ms", $"{BackendReplyTimeoutMs} is outside 100..600000");
    }
}
