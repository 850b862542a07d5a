using Microsoft.Win32.SafeHandles;
using Vism.Native;

namespace Vism.Fuzz;

/// <summary>
/// Plays a byte stream into a real Unix socket pair the way a peer would: in chunks of a size the
/// input chooses, some chunks carrying a descriptor (SCM_RIGHTS), then closes the sending end.
/// Layout of an input: <c>u8 chunking, u8 fdMask, stream...</c>: chunking 0 sends everything at
/// once, otherwise chunks of <c>chunking</c> bytes; bit i of fdMask attaches one descriptor to
/// chunk i. The receiving end is non-blocking, so a reader sees partial messages between chunks.
/// </summary>
internal sealed class SocketFeed : IDisposable
{
    /// <summary>Most stream bytes fed (well under the socket buffer, so sends never block).</summary>
    public const int MaxStream = 64 * 1024;

    /// <summary>Most pieces: after that the rest goes at once (a long trickle only costs time).</summary>
    public const int MaxChunks = 64;

    /// <summary>Length of piece <paramref name="i"/> when <paramref name="left"/> bytes are left.</summary>
    public static int Length(int i, int chunk, int left) => i + 1 < MaxChunks ? Math.Min(chunk, left) : left;

    private readonly SafeFileHandle _devNull = File.OpenHandle("/dev/null");
    private readonly int _devNullBaseline = CountDevNull();
    private int _open = -1;

    /// <summary>Feeds <paramref name="input"/>: <paramref name="read"/> is called on the receiving
    /// socket after every chunk and once more after the sender closed; it returns false to stop.</summary>
    public void Feed(ReadOnlySpan<byte> input, Func<UnixSocket, bool, bool> read)
    {
        if (input.Length < 2) return;
        int chunk = input[0] == 0 ? MaxStream : input[0];
        byte fdMask = input[1];
        ReadOnlySpan<byte> stream = input[2..];
        if (stream.Length > MaxStream) stream = stream[..MaxStream];
        (UnixSocket sender, UnixSocket receiver) = UnixSocket.Pair();
        using (receiver)
        {
            Fd.SetNonBlocking(receiver.Handle);
            bool more = true;
            using (sender)
            {
                for (int i = 0, at = 0; at < stream.Length && more; i++)
                {
                    int length = Length(i, chunk, stream.Length - at);
                    ReadOnlySpan<byte> piece = stream.Slice(at, length);
                    at += length;
                    if (i < 8 && (fdMask & (1 << i)) != 0) sender.Send(piece, [_devNull]);
                    else sender.Send(piece);
                    more = read(receiver, false);
                }
            }
            if (more) read(receiver, true);
        }
    }

    /// <summary>Throws when a descriptor that came over the socket is still open (the reader leaked it).</summary>
    public void CheckNoLeak(string who)
    {
        // Counting is cheap; looking at every target only when the count moved (the runtime opens
        // some descriptors lazily).
        int open = Fd.CountOpen();
        if (open == _open) return;
        _open = open;
        int now = CountDevNull();
        if (now != _devNullBaseline)
            throw new FuzzFinding($"{who}: {now - _devNullBaseline} received descriptors leaked");
    }

    /// <summary>Open descriptors of /dev/null: the ones fed are duplicates of <see cref="_devNull"/>.</summary>
    private static int CountDevNull()
    {
        int n = 0;
        foreach (string fd in Directory.EnumerateFileSystemEntries("/proc/self/fd"))
        {
            try
            {
                if (new FileInfo(fd).LinkTarget == "/dev/null") n++;
            }
            catch (IOException)
            {
                // Closed while we looked (the directory's own descriptor).
            }
        }
        return n;
    }

    public void Dispose() => _devNull.Dispose();
}
