using System.Runtime.InteropServices;
using Mono.Unix.Native;

namespace Vism.Native;

/// <summary>A failed system call, with its errno and what was being done.</summary>
public sealed class PosixException : IOException
{
    public PosixException(string operation, Errno errno)
        : base($"{operation}: {errno} ({Describe(errno)})", -(int)NativeConvert.FromErrno(errno))
    {
        Operation = operation;
        Errno = errno;
    }

    public string Operation { get; }

    public Errno Errno { get; }

    /// <summary>Throws for the calling thread's last errno (after a Mono.Posix call).</summary>
    public static PosixException FromLastError(string operation) => new(operation, Stdlib.GetLastError());

    /// <summary>Throws for the errno of the last LibraryImport call with SetLastError.</summary>
    public static PosixException FromPInvoke(string operation) =>
        new(operation, NativeConvert.ToErrno(Marshal.GetLastPInvokeError()));

    public static string Describe(Errno errno)
    {
        try
        {
            return Mono.Unix.UnixMarshal.GetErrorDescription(errno);
        }
        catch (Exception)
        {
            return errno.ToString();
        }
    }

    /// <summary>Returns <paramref name="rc"/> unless it is negative, in which case throws with the last errno.</summary>
    public static long Check(long rc, string operation) => rc < 0 ? throw FromLastError(operation) : rc;

    /// <summary>Returns <paramref name="rc"/> unless it is negative, in which case throws with the last errno.</summary>
    public static int Check(int rc, string operation) => rc < 0 ? throw FromLastError(operation) : rc;
}
