using Vism.Abstractions;
using Vism.VhostUser;

namespace Vism.Driver.VhostUser;

/// <summary>How <see cref="VhostUserFrontend"/> behaves: the knobs QEMU's
/// <c>vhost-user-test-device-pci</c> has, plus which protocol features to accept.</summary>
public sealed record VhostUserFrontendOptions
{
    /// <summary>What QEMU 11.1.3 acks when a backend offers it (MQ, REPLY_ACK, BACKEND_REQ, CONFIG,
    /// BACKEND_SEND_FD, RESET_DEVICE, CONFIGURE_MEM_SLOTS, STATUS, SHMEM).</summary>
    public static readonly ulong QemuProtocolFeatures =
        (1UL << ProtocolFeature.Mq) | (1UL << ProtocolFeature.ReplyAck) | (1UL << ProtocolFeature.BackendReq) |
        (1UL << ProtocolFeature.Config) | (1UL << ProtocolFeature.BackendSendFd) | (1UL << ProtocolFeature.ResetDevice) |
        (1UL << ProtocolFeature.ConfigureMemSlots) | (1UL << ProtocolFeature.Status) | (1UL << ProtocolFeature.Shmem);

    /// <summary>Protocol features the frontend accepts (it acks the intersection with the backend's offer).</summary>
    public ulong ProtocolFeatures { get; init; } = QemuProtocolFeatures;

    /// <summary>The virtio device ID (vhost-user does not carry it; QEMU takes it from <c>virtio-id</c>).</summary>
    public uint DeviceId { get; init; } = Virtio.IsmDeviceId;

    /// <summary>Queues to drive (QEMU <c>num_vqs</c>); 0 = as many as GET_QUEUE_NUM reports (or 1 without MQ).</summary>
    public int QueueCount { get; init; }

    /// <summary>Size of every queue the driver may choose at most (QEMU <c>vq_size</c>).</summary>
    public ushort QueueSize { get; init; } = 256;

    /// <summary>The last this many queues are per-region interrupt vectors (their call fds).</summary>
    public int VectorCount { get; init; }

    /// <summary>Whether the start ends with SET_STATUS(ACKNOWLEDGE | DRIVER | DRIVER_OK) and the stop
    /// with SET_STATUS 0, as QEMU's vhost_user_dev_start / vhost_user_reset_status intend. QEMU 11.1.3
    /// skips both for vhost-user-test-device (their "last queue pair" check fails; observed), so the
    /// default is false: a start then only says FEATURES_OK, and a stop is SET_VRING_ENABLE 0 and
    /// GET_VRING_BASE alone, the same as a VM pause.</summary>
    public bool SendStartStopStatus { get; init; }

    /// <summary>Whether <see cref="VhostUserFrontend.Notify"/> rings the doorbell after its store into
    /// the NOTIFY window: a kick on the controlq's kick eventfd, which makes the backend scan the
    /// window at once instead of at its next poll. A spurious kick is legal virtio and QEMU never
    /// sends one, so nothing a guest sees changes. Raw <see cref="VhostUserFrontend.WriteNotify"/>
    /// (a guest's plain store) never rings it.</summary>
    public bool NotifyDoorbell { get; init; } = true;

    /// <summary>How long a reply on the main socket may take.</summary>
    public TimeSpan ReplyTimeout { get; init; } = TimeSpan.FromSeconds(10);

    /// <summary>Called with the descriptor of every SHMEM_MAP of the REGIONS window before it is
    /// mapped, with the window offset and whether the backend asked for a writable mapping. For
    /// tests that play a VMM keeping the descriptor (the callback may duplicate it); null by default.</summary>
    public Action<ulong, System.Runtime.InteropServices.SafeHandle, bool>? DescriptorReceived { get; init; }
}
