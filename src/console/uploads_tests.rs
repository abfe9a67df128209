use super::*;

#[test]
fn uploaded_names_become_safe_csv_file_names() {
    assert_eq!(safe_name(Some("../../etc/passwd")), "passwd.csv");
    assert_eq!(safe_name(Some("Users Q4.csv")), "Users-Q4.csv");
    assert_eq!(safe_name(Some("..")), "upload.csv");
    assert_eq!(safe_name(None), "upload.csv");
    assert_eq!(safe_name(Some("<script>.csv")), "-script-.csv");
}
