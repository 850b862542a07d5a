using Vism.Abstractions;

namespace Vism.Driver;

/// <summary>
/// A virtio 1.x driver core over any <see cref="IDriverTransport"/>, following Linux's probe
/// sequence: reset (and wait for 0), ACKNOWLEDGE, DRIVER, read the device features, write the
/// accepted subset, FEATURES_OK and re-read it, set up the queues, DRIVER_OK. A failure sets FAILED.
/// </summary>
public sealed class VirtioDriver
{
    private readonly DriverQueue[] _queues;

    private VirtioDriver(IDriverTransport transport, ulong deviceFeatures, ulong features, DriverQueue[] queues)
    {
        Transport = transport;
        DeviceFeatures = deviceFeatures;
        Features = features;
        _queues = queues;
    }

    /// <summary>The transport.</summary>
    public IDriverTransport Transport { get; }

    /// <summary>What the device offered.</summary>
    public ulong DeviceFeatures { get; }

    /// <summary>What was negotiated.</summary>
    public ulong Features { get; }

    /// <summary>The queues set up, by index.</summary>
    public IReadOnlyList<DriverQueue> Queues => _queues;

    /// <summary>Whether feature <paramref name="bit"/> was negotiated.</summary>
    /// <param name="bit">A feature bit number.</param>
    public bool Has(int bit) => Vism.Abstractions.Features.Has(Features, bit);

    /// <summary>Probes and starts the device.</summary>
    /// <param name="transport">The transport.</param>
    /// <param name="wanted">Features the driver understands (VERSION_1 is always added).</param>
    /// <param name="queueCount">How many queues to set up, given the negotiated features.</param>
    /// <param name="queueSize">Preferred queue size (reduced to the device's maximum).</param>
    /// <param name="maxIndirect">Indirect table size when INDIRECT_DESC is negotiated (0: none).</param>
    /// <returns>The running driver.</returns>
    /// <exception cref="DriverTransportException">When the device refuses a step.</exception>
    public static VirtioDriver Start(IDriverTransport transport, ulong wanted, Func<ulong, int> queueCount,
        ushort queueSize = 64, int maxIndirect = 16)
    {
        ArgumentNullException.ThrowIfNull(transport);
        ArgumentNullException.ThrowIfNull(queueCount);
        ArgumentOutOfRangeException.ThrowIfZero(queueSize);
        transport.WriteStatus(DeviceStatus.Reset);
        if (transport.ReadStatus() != DeviceStatus.Reset)
            throw new DriverTransportException("the device did not reset (status still non-zero)");
        var status = DeviceStatus.Acknowledge;
        transport.WriteStatus(status);
        status |= DeviceStatus.Driver;
        transport.WriteStatus(status);
        try
        {
            ulong device = transport.ReadDeviceFeatures();
            if (!Vism.Abstractions.Features.Has(device, Vism.Abstractions.Features.Version1))
                throw new DriverTransportException("the device does not offer VIRTIO_F_VERSION_1");
            ulong features = device & (wanted | Vism.Abstractions.Features.Mask(Vism.Abstractions.Features.Version1));
            transport.WriteDriverFeatures(features);
            status |= DeviceStatus.FeaturesOk;
            transport.WriteStatus(status);
            if ((transport.ReadStatus() & DeviceStatus.FeaturesOk) == 0)
                throw new DriverTransportException($"the device refused features 0x{features:x}");

            int count = queueCount(features);
            bool eventIdx = Vism.Abstractions.Features.Has(features, Vism.Abstractions.Features.RingEventIdx);
            int indirect = Vism.Abstractions.Features.Has(features, Vism.Abstractions.Features.RingIndirectDesc) ? maxIndirect : 0;
            var queues = new DriverQueue[count];
            for (int i = 0; i < count; i++)
            {
                ushort max = transport.MaxQueueSize(i);
                if (max == 0)
                    throw new DriverTransportException($"the device has no queue {i}");
                ushort size = (ushort)Math.Min(queueSize, max);
                size = (ushort)(1 << (int)Math.Log2(size)); // largest power of two not above
                queues[i] = new DriverQueue(transport.Ram, i, size, eventIdx, indirect);
                transport.StartQueue(i, queues[i].Settings);
            }
            status |= DeviceStatus.DriverOk;
            transport.WriteStatus(status);
            DeviceStatus now = transport.ReadStatus();
            if ((now & DeviceStatus.DriverOk) == 0 || (now & DeviceStatus.DeviceNeedsReset) != 0)
                throw new DriverTransportException($"the device did not start (status 0x{(byte)now:x2})");
            return new VirtioDriver(transport, device, features, queues);
        }
        catch
        {
            try { transport.WriteStatus(status | DeviceStatus.Failed); } catch (DriverTransportException) { }
            throw;
        }
    }

    /// <summary>Reads a config field consistently (re-reading while the config generation changes).</summary>
    /// <param name="offset">Byte offset.</param>
    /// <returns>The little-endian u64 at <paramref name="offset"/>.</returns>
    public ulong ReadConfigUInt64(uint offset)
    {
        Span<byte> bytes = stackalloc byte[8];
        uint before;
        do
        {
            before = Transport.ReadConfigGeneration();
            Transport.ReadConfig(offset, bytes);
        }
        while (Transport.ReadConfigGeneration() != before);
        return System.Buffers.Binary.BinaryPrimitives.ReadUInt64LittleEndian(bytes);
    }

    /// <summary>Kicks queue <paramref name="index"/> if the device asked for it.</summary>
    /// <param name="index">Queue index.</param>
    public void KickIfNeeded(int index)
    {
        if (_queues[index].ShouldKick())
            Transport.Kick(index);
    }

    /// <summary>Waits for the next used entry of queue <paramref name="index"/>.</summary>
    /// <param name="index">Queue index.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <param name="used">The entry.</param>
    /// <returns>False on timeout.</returns>
    public bool WaitUsed(int index, TimeSpan timeout, out UsedElement used) => WaitUsed(index, timeout, TimeSpan.Zero, out used);

    /// <summary>Waits for the next used entry of queue <paramref name="index"/>, first polling the used
    /// ring for up to <paramref name="spin"/> (yielding the core at every look) and then sleeping on
    /// the transport's interrupt. Allocates nothing.</summary>
    /// <param name="index">Queue index.</param>
    /// <param name="timeout">How long to wait in all.</param>
    /// <param name="spin">How long to poll before sleeping (zero: sleep at once).</param>
    /// <param name="used">The entry.</param>
    /// <returns>False on timeout.</returns>
    public bool WaitUsed(int index, TimeSpan timeout, TimeSpan spin, out UsedElement used)
    {
        DriverQueue q = _queues[index];
        if (q.TryTakeUsed(out used))
            return true;
        if (spin > TimeSpan.Zero)
        {
            // While polling, the device is asked for no interrupt: an entry that comes within the
            // spin costs neither an interrupt nor (over MMIO) the InterruptStatus round trip after it.
            long spinUntil = System.Diagnostics.Stopwatch.GetTimestamp() + (long)(spin.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
            q.SetPolling(true);
            try
            {
                while (System.Diagnostics.Stopwatch.GetTimestamp() < spinUntil)
                {
                    if (q.TryTakeUsed(out used))
                        return true;
                    // Yield at every look: a thread that shares this core (vism's loop, the other
                    // peer, on a small host) runs at once instead of at the end of a time slice; on
                    // a core of its own the yield returns at once. Every 64 looks cost a busy-polling
                    // vism 3x on two cores (docs/benchmarks.md, "Spinning peers that yield").
                    Thread.Yield();
                }
            }
            finally
            {
                q.SetPolling(false); // the loop below looks at the ring again before it sleeps
            }
        }
        long deadline = Environment.TickCount64 + (long)timeout.TotalMilliseconds;
        while (true)
        {
            if (q.TryTakeUsed(out used))
                return true;
            long left = deadline - Environment.TickCount64;
            if (left <= 0)
                return false;
            Transport.WaitQueue(index, TimeSpan.FromMilliseconds(Math.Min(left, 100)));
        }
    }
}
