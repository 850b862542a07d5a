using System.ComponentModel;
using Vism.Abstractions;
using Vism.Native;

namespace Vism.Transport.VhostUser;

/// <summary>Options of the <c>vhost-user</c> transport (the <c>[device.transport]</c> section).</summary>
public sealed class VhostUserOptions : UnixSocketOptions, IValidatableOptions, IVectorTransportOptions
{
    /// <summary>Per-region vectors a device whose events plugin uses them gets when <see cref="Vectors"/> is not set.</summary>
    public const int DefaultEventVectors = 4;

    /// <summary>Most per-region vectors (vhost-user queue indices are 8 bits wide).</summary>
    public const int MaxVectors = 128;

    /// <summary>Unix socket the device listens on. Empty: <c>&lt;socket-directory&gt;/&lt;device name&gt;.sock</c>.</summary>
    [Description("Unix socket the device listens on; empty means <socket-directory>/<device name>.sock")]
    public string SocketPath { get; set; } = "";

    /// <summary>Per-region interrupt vectors (VIRTIO_ISM_F_EVENT_IRQ), exposed as the call fds of
    /// extra queues after the device's own (vector v is queue <c>device queues + v</c>); QEMU's
    /// <c>num_vqs</c> must count them. Null (the default): <see cref="DefaultEventVectors"/> when the
    /// device offers EVENT_IRQ (events kind <c>irq</c>), else none, so EVENT_IRQ is usable by default
    /// and a device with the eventq keeps 2 queues.</summary>
    [Description("Per-region interrupt vectors, exposed as extra queues after the device's own (QEMU num_vqs = device queues + vectors); default: 4 when the device offers EVENT_IRQ (events kind irq), else 0")]
    public int? Vectors { get; set; }

    /// <inheritdoc />
    int IVectorTransportOptions.EventVectors => Vectors ?? DefaultEventVectors;

    /// <summary>What QEMU's <c>vhost-user-test-device-pci</c> shows a guest of the vectors.</summary>
    public const string QemuVectorLimitation =
        "QEMU 11.1's vhost-user-test-device-pci gives the guest one MSI-X vector (nvectors = 1), shared by the config interrupt and every queue, " +
        "so a guest cannot tell the per-region vectors apart (and a Linux guest ignores a signalled queue with no used buffers); " +
        "vism's own driver side and VMMs that wire each call fd to an interrupt of its own can. For QEMU guests use events kind \"vq\"";

    /// <inheritdoc />
    string? IVectorTransportOptions.GuestVectorLimitation => QemuVectorLimitation;

    /// <summary>The vectors a started transport offers <paramref name="device"/>.</summary>
    /// <param name="device">The device being served.</param>
    /// <returns><see cref="Vectors"/>, or by default <see cref="DefaultEventVectors"/> when the device offers EVENT_IRQ, else 0.</returns>
    public int VectorsFor(IVirtioDevice device) =>
        Vectors ?? (Features.Has(device.DeviceFeatures, Features.IsmEventIrq) ? DefaultEventVectors : 0);

    /// <summary>Memory slots offered to the frontend (GET_MAX_MEM_SLOTS).</summary>
    [Description("Memory regions the frontend may add with ADD_MEM_REG (GET_MAX_MEM_SLOTS)")]
    public int MaxMemSlots { get; set; } = 509;

    /// <summary>Shortest NOTIFY-window poll interval accepted: below it the loop would do little but poll.</summary>
    public static readonly TimeSpan MinNotifyPoll = TimeSpan.FromMicroseconds(10);

    /// <summary>NOTIFY-window poll interval right after a slot write, a kick, the start or a new
    /// mapping: the latency bound while the device is active.</summary>
    [Description("NOTIFY window poll interval right after a slot write, a kick or a new mapping (the latency bound while slots are being written), e.g. \"50us\"; 10us..1s")]
    public TimeSpan NotifyPollFast { get; set; } = TimeSpan.FromMicroseconds(50);

    /// <summary>How long the NOTIFY window is polled at <see cref="NotifyPollFast"/> after the last slot
    /// write, kick or mapping before the interval starts doubling.</summary>
    [Description("How long polling stays at notify-poll-fast after the last slot write, kick or mapping before the interval starts doubling (keeps a device notified at least this often at the fast latency); 0..1s")]
    public TimeSpan NotifyPollHold { get; set; } = TimeSpan.FromMilliseconds(1);

    /// <summary>Longest NOTIFY-window poll interval: the interval doubles after each empty scan from
    /// <see cref="NotifyPollFast"/> up to this, the latency bound after an idle period. Polling stops
    /// while no region slot is in use.</summary>
    [Description("Longest NOTIFY window poll interval (the latency bound after an idle period); the interval doubles per empty scan from notify-poll-fast; notify-poll-fast..10s")]
    public TimeSpan NotifyPollSlow { get; set; } = TimeSpan.FromMilliseconds(50);

    /// <summary>How long a backend-channel request (SHMEM_MAP/UNMAP) may wait for its reply before the
    /// frontend is considered broken and disconnected (ms).</summary>
    [Description("How long SHMEM_MAP/UNMAP may wait for the frontend's reply before the connection is dropped, in ms")]
    public int BackendReplyTimeoutMs { get; set; } = 10_000;

    private static string Micros(TimeSpan t) => $"{t.TotalMicroseconds:0.#}us";

    /// <summary>The socket path this device serves (a relative one is relative to the socket
    /// directory, <see cref="HostPaths"/>).</summary>
    /// <param name="host">The host (for its socket directory).</param>
    /// <param name="device">The device (for its name).</param>
    /// <returns>An absolute path.</returns>
    public string ResolveSocketPath(HostDescription host, DeviceDescription device) =>
        host.Socket(string.IsNullOrWhiteSpace(SocketPath) ? device.Name + ".sock" : SocketPath);

    /// <inheritdoc />
    public void Validate(OptionsValidationContext context)
    {
        ValidateAccess(context);
        context.ClaimSocketPath("socket-path", ResolveSocketPath(context.Host, context.Device));
        if (Vectors is not null and (< 0 or > MaxVectors))
            context.Error("vectors", $"{Vectors} is outside 0..{MaxVectors}");
        if (MaxMemSlots is < 1 or > 509)
            context.Error("max-mem-slots", $"{MaxMemSlots} is outside 1..509 (KVM's limit)");
        if (NotifyPollFast < MinNotifyPoll || NotifyPollFast > TimeSpan.FromSeconds(1))
            context.Error("notify-poll-fast", $"{Micros(NotifyPollFast)} is outside 10us..1s");
        if (NotifyPollSlow < NotifyPollFast || NotifyPollSlow > TimeSpan.FromSeconds(10))
            context.Error("notify-poll-slow", $"{Micros(NotifyPollSlow)} must lie between notify-poll-fast ({Micros(NotifyPollFast)}) and 10s");
        if (NotifyPollHold < TimeSpan.Zero || NotifyPollHold > TimeSpan.FromSeconds(1))
            context.Error("notify-poll-hold", $"{Micros(NotifyPollHold)} is outside 0..1s");
        if (BackendReplyTimeoutMs is < 100 or > 600_000)
            context.Error("backend-reply-timeout-ms", $"{BackendReplyTimeoutMs} is outside 100..600000");
    }
}
