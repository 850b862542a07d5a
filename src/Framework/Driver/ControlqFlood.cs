using Vism.Abstractions;

namespace Vism.Driver;

/// <summary>
/// A hostile driver for fairness tests and benchmarks: a thread that keeps every entry of a
/// client's controlq available, each the same chain of <see cref="ChainLength"/> descriptors, and
/// kicks whenever it made entries available. A chain of one descriptor is one device-writable
/// buffer (too short a request: an ERR each); a longer one is one indirect table of one-byte
/// readable descriptors (the ALLOC class byte) ending in a device-writable ack buffer. The flood
/// writes the ring with the <c>Raw*</c> members, so the client must not be used while it runs.
/// </summary>
public sealed class ControlqFlood : IDisposable
{
    private readonly Thread _thread;
    private volatile bool _stop;
    private long _served;
    private long _kicks;

    /// <summary>Writes the chains and starts the thread.</summary>
    /// <param name="client">The hostile device's client (its controlq is taken over).</param>
    /// <param name="chainLength">Descriptors per chain (1 or more; more than one needs
    /// VIRTIO_F_INDIRECT_DESC negotiated).</param>
    public ControlqFlood(IsmClient client, int chainLength)
    {
        ArgumentNullException.ThrowIfNull(client);
        ArgumentOutOfRangeException.ThrowIfLessThan(chainLength, 1);
        ChainLength = chainLength;
        DriverQueue q = client.Driver.Queues[Virtio.ControlQueue];
        GuestRam ram = client.Transport.Ram;
        if (chainLength > 1)
        {
            ulong table = WriteIndirectTable(q, ram, chainLength);
            for (int d = 0; d < q.Size; d++)
                q.RawDescriptor(d, table, (uint)(16 * chainLength), DriverQueue.DescIndirect, 0);
        }
        else
        {
            // One read-write buffer: no readable byte is too short a request header.
            ulong ack = ram.Allocate(17, 16);
            for (int d = 0; d < q.Size; d++)
                q.RawDescriptor(d, ack, 17, DriverQueue.DescWrite, 0);
        }
        _thread = new Thread(() =>
        {
            ushort avail = q.AvailIndex;
            ushort last = q.UsedIndex;
            while (!_stop)
            {
                ushort used = q.UsedIndex;
                Interlocked.Add(ref _served, (ushort)(used - last));
                last = used;
                bool added = false;
                while ((ushort)(avail - used) < q.Size)
                {
                    q.RawPublish((ushort)(avail % q.Size));
                    avail++;
                    added = true;
                }
                if (added)
                {
                    client.Transport.Kick(Virtio.ControlQueue);
                    Interlocked.Increment(ref _kicks);
                }
                else
                {
                    Thread.Yield();
                }
            }
        }) { IsBackground = true, Name = "controlq-flood" };
        _thread.Start();
    }

    /// <summary>Writes an indirect table of <paramref name="length"/> descriptors, well-formed but
    /// for its length: <paramref name="length"/> - 1 one-byte readable buffers holding the ALLOC
    /// class byte, then a 17-byte device-writable one for the ack.</summary>
    /// <param name="q">The queue whose <c>Raw*</c> writer is used.</param>
    /// <param name="ram">Guest RAM to allocate the table and buffers in.</param>
    /// <param name="length">Entries (2 or more).</param>
    /// <returns>The table's guest address (its length is 16 * <paramref name="length"/>).</returns>
    public static ulong WriteIndirectTable(DriverQueue q, GuestRam ram, int length)
    {
        ArgumentNullException.ThrowIfNull(q);
        ArgumentNullException.ThrowIfNull(ram);
        ArgumentOutOfRangeException.ThrowIfLessThan(length, 2);
        ulong buffer = ram.Allocate(64, 16);
        ram.Span(buffer, 64).Clear();
        ram.Span(buffer, 1)[0] = IsmControl.ClassAlloc;
        ulong table = ram.Allocate(16UL * (ulong)length, 16);
        for (int i = 0; i < length - 1; i++)
            q.RawDescriptorAt(table, i, buffer, 1, DriverQueue.DescNext, (ushort)(i + 1));
        q.RawDescriptorAt(table, length - 1, buffer + 32, 17, DriverQueue.DescWrite, 0);
        return table;
    }

    /// <summary>Descriptors per hostile chain.</summary>
    public int ChainLength { get; }

    /// <summary>Whether the thread still runs.</summary>
    public bool Running => !_stop && _thread.IsAlive;

    /// <summary>Hostile requests the device completed so far.</summary>
    public long Served => Volatile.Read(ref _served);

    /// <summary>Kicks sent so far (each after making entries available).</summary>
    public long Kicks => Volatile.Read(ref _kicks);

    /// <summary>Waits until at least <paramref name="count"/> hostile requests were completed.</summary>
    /// <param name="count">Requests.</param>
    /// <param name="timeout">How long to wait.</param>
    /// <returns>False on timeout.</returns>
    public bool WaitServed(long count, TimeSpan timeout) => SpinWait.SpinUntil(() => Served >= count, timeout);

    /// <summary>Stops the thread (the ring stays as the flood left it).</summary>
    public void Dispose()
    {
        _stop = true;
        _thread.Join();
    }
}
