using System.Runtime.InteropServices;

namespace Vism.Conformance.Probes;

/// <summary>
/// Reads and writes memory at an address without risking a SIGSEGV or SIGBUS: the bytes travel
/// through a pipe, so the kernel touches the address inside <c>read</c>/<c>write</c> and reports a
/// bad address (unmapped, not readable, not writable, backing gone) as EFAULT instead of a signal.
/// This is how the suite proves that a read-only region mapping really refuses writes, and how it
/// keeps writing through a region while a peer detaches it.
/// </summary>
public static partial class SafeMemory
{
    private const int Chunk = 32 << 10; // below the default 64 KiB pipe buffer
    private const int EFAULT = 14;
    private const int EINTR = 4;
    private const int O_CLOEXEC = 0x80000;

    /// <summary>Copies <paramref name="source"/> to <paramref name="address"/>.</summary>
    /// <param name="address">Destination in this process.</param>
    /// <param name="source">The bytes.</param>
    /// <returns>False when some destination byte is not writable (nothing is guaranteed about the bytes before it).</returns>
    public static unsafe bool TryWrite(nint address, ReadOnlySpan<byte> source)
    {
        using var pipe = new Pipe();
        byte[] spill = new byte[Math.Min(Chunk, Math.Max(1, source.Length))];
        for (int done = 0; done < source.Length;)
        {
            int n = Math.Min(Chunk, source.Length - done);
            fixed (byte* p = source.Slice(done, n))
                pipe.WriteAll(p, n);
            int landed = 0;
            while (landed < n)
            {
                nint r = read(pipe.Read, address + done + landed, (nuint)(n - landed));
                if (r > 0)
                {
                    landed += (int)r;
                    continue;
                }
                int errno = Marshal.GetLastPInvokeError();
                if (r < 0 && errno == EINTR)
                    continue;
                if (r < 0 && errno != EFAULT)
                    throw new IOException($"read from a pipe failed: errno {errno}");
                fixed (byte* s = spill)
                    pipe.ReadAll(s, n - landed); // drain what did not land
                return false;
            }
            done += n;
        }
        return true;
    }

    /// <summary>Copies the bytes at <paramref name="address"/> into <paramref name="destination"/>.</summary>
    /// <param name="address">Source in this process.</param>
    /// <param name="destination">Receives the bytes.</param>
    /// <returns>False when some source byte is not readable.</returns>
    public static unsafe bool TryRead(nint address, Span<byte> destination)
    {
        using var pipe = new Pipe();
        for (int done = 0; done < destination.Length;)
        {
            int n = Math.Min(Chunk, destination.Length - done);
            nint w;
            do w = write(pipe.Write, address + done, (nuint)n);
            while (w < 0 && Marshal.GetLastPInvokeError() == EINTR);
            if (w < 0)
            {
                int errno = Marshal.GetLastPInvokeError();
                if (errno == EFAULT)
                    return false;
                throw new IOException($"write to a pipe failed: errno {errno}");
            }
            if (w == 0)
                return false;
            fixed (byte* d = destination.Slice(done, (int)w))
                pipe.ReadAll(d, (int)w);
            done += (int)w;
        }
        return true;
    }

    /// <summary>Whether one byte at <paramref name="address"/> can be written: it is read and written
    /// back unchanged, so a racing writer elsewhere may lose at most that byte's update.</summary>
    /// <param name="address">The address.</param>
    /// <returns>Whether it is writable.</returns>
    public static bool IsWritable(nint address)
    {
        Span<byte> b = stackalloc byte[1];
        return TryRead(address, b) && TryWrite(address, b);
    }

    private sealed unsafe class Pipe : IDisposable
    {
        public Pipe()
        {
            int* fds = stackalloc int[2];
            if (pipe2(fds, O_CLOEXEC) != 0)
                throw new IOException($"pipe2 failed: errno {Marshal.GetLastPInvokeError()}");
            Read = fds[0];
            Write = fds[1];
        }

        public int Read { get; }

        public int Write { get; }

        public void WriteAll(byte* p, int n)
        {
            for (int done = 0; done < n;)
            {
                nint w = write(Write, (nint)(p + done), (nuint)(n - done));
                if (w < 0 && Marshal.GetLastPInvokeError() == EINTR) continue;
                if (w <= 0) throw new IOException($"write to a pipe failed: errno {Marshal.GetLastPInvokeError()}");
                done += (int)w;
            }
        }

        public void ReadAll(byte* p, int n)
        {
            for (int done = 0; done < n;)
            {
                nint r = read(Read, (nint)(p + done), (nuint)(n - done));
                if (r < 0 && Marshal.GetLastPInvokeError() == EINTR) continue;
                if (r <= 0) throw new IOException($"read from a pipe failed: errno {Marshal.GetLastPInvokeError()}");
                done += (int)r;
            }
        }

        public void Dispose()
        {
            close(Read);
            close(Write);
        }
    }

    [LibraryImport("libc", SetLastError = true)]
    private static unsafe partial int pipe2(int* fds, int flags);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, nint buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, nint buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int close(int fd);
}
